"""examples/lora_mobilenet.py runs as a user runs it (few steps): one table row per task, and switching back to
the first adapter restores the accuracy it had after its QAT."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft", reason="the example needs the lora extra: pip install 'lowbit[lora]'")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lora_mobilenet.py"


@pytest.mark.slow
def test_example_trains_switches_and_restores():
    run = subprocess.run([sys.executable, str(EXAMPLE), "--float-steps", "4", "--qat-steps", "2", "--batch", "8"],
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = re.findall(r"^\| (blur|noise) \| 2 \| ([\d.]+)% \| ([\d.]+)% \| ([\d.]+)% \| [\d.]+ \|$", run.stdout, re.M)
    assert [r[0] for r in rows] == ["blur", "noise"], run.stdout
    switched_back = re.search(r"switched back to blur: ([\d.]+)%", run.stdout).group(1)
    assert switched_back == rows[0][3]
