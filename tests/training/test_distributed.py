"""Under torchrun: 2 processes with batch b give the encodings (calibrated, then trained a step by lowbit.qat) that
1 process with batch 2b gives, rank 0 writes the files, and ranks holding different sims stop with one line.

Only the first training step is compared: after it, a float-rounding difference that moves one weight or
activation across a rounding boundary changes it by a whole quantization step, and the runs drift apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowbit.quant.encodings_file import read_encodings

JOB = Path(__file__).with_name("distributed_job.py")


def _torchrun(processes: int, out: Path, batch: int, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(JOB), str(out), str(batch), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _assert_same_encodings(a: Path, b: Path, rtol: float) -> None:
    first, second = read_encodings(a), read_encodings(b)
    assert first.params.keys() == second.params.keys() and first.activation.keys() == second.activation.keys()
    for table, other in ((first.params, second.params), (first.activation, second.activation)):
        for name, encoding in table.items():
            torch.testing.assert_close(other[name].scale, encoding.scale, rtol=rtol, atol=0, msg=name)
            assert torch.equal(other[name].offset, encoding.offset), name


@pytest.mark.slow
def test_two_processes_with_batch_b_equal_one_with_batch_2b(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = _torchrun(1, one, 16)
    assert single.returncode == 0, single.stderr[-2000:]
    double = _torchrun(2, two, 8)
    assert double.returncode == 0, double.stderr[-2000:]
    assert double.stdout.count("qat: 4 steps") == 2 and single.stdout.count("qat: 4 steps") == 1
    _assert_same_encodings(one / "calibrated" / "tiny.encodings", two / "calibrated" / "tiny.encodings", rtol=0)
    _assert_same_encodings(one / "trained" / "tiny.encodings", two / "trained" / "tiny.encodings", rtol=1e-5)


@pytest.mark.slow
def test_ranks_with_different_sims_stop_with_one_line(tmp_path):
    run = _torchrun(2, tmp_path, 8, "mismatch")
    assert run.returncode != 0
    assert "InputError: ranks 1 hold a sim of another structure than rank 0" in run.stderr
