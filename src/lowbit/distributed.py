"""Running under ``torchrun``: when the caller has initialised a ``torch.distributed`` process group, each
rank takes every N-th batch, calibration statistics are pooled, and only rank 0 writes files."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable

import torch
import torch.distributed as dist

from lowbit.errors import InputError, SpecError


def world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def joined_from_environment() -> None:
    """Join the process group torchrun describes in the environment (gloo for CPU tensors, nccl for CUDA ones), if
    any and not joined yet."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")


class Shard:
    """Every N-th batch of ``data`` starting at this rank's; re-iterable when ``data`` is, with the length of this
    rank's share where ``data`` has one."""

    def __init__(self, data):
        self.data = data
        self.rank, self.size = world()

    def __iter__(self):
        return itertools.islice(self.data, self.rank, None, self.size)

    def __len__(self) -> int:
        return -(-(len(self.data) - self.rank) // self.size)


def shard(data):
    """``data`` itself in one process, else this rank's :class:`Shard` of it (a one-pass iterator stays one)."""
    if world()[1] == 1:
        return data
    sharded = Shard(data)
    return iter(sharded) if iter(data) is data else sharded


def check_ranks(structure: Callable[[], list[str]], device: torch.device) -> None:
    """InputError where ranks hold differently structured sims (``structure()``, asked only under a process group),
    SpecError where the process group's backend cannot run on ``device`` (gloo: CPU; nccl: CUDA)."""
    size = world()[1]
    if size == 1:
        return
    backend = dist.get_backend()
    if backend in ("gloo", "nccl") and (backend == "nccl") != (device.type == "cuda"):
        raise SpecError(f"the process group's backend is {backend} but the model is on {device.type}: "
                        f"use gloo for CPU and nccl for CUDA")
    digest = hashlib.sha256("\n".join(structure()).encode()).hexdigest()
    digests: list = [None] * size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise InputError(f"ranks {', '.join(str(r) for r, d in enumerate(digests) if d != digests[0])} hold a "
                         f"sim of another structure than rank 0: every rank must build the same model and target")


def pool_estimators(quantizers: dict) -> None:
    """Merge every rank's range estimator of each quantizer, in rank order, so all ranks hold the same statistics."""
    size = world()[1]
    if size == 1:
        return
    gathered: list = [None] * size
    dist.all_gather_object(gathered, {key: _to_cpu(q.estimator) for key, q in quantizers.items()})
    for key, quantizer in quantizers.items():
        pooled = gathered[0][key]
        for other in gathered[1:]:
            pooled.merge(other[key])
        quantizer.estimator = pooled


def writes_files() -> bool:
    """Whether this process writes files (rank 0, or the only process)."""
    return world()[0] == 0


def barrier() -> None:
    """Wait for every rank (nothing in one process)."""
    if world()[1] > 1:
        dist.barrier()


def _to_cpu(estimator):
    """The estimator with its tensors on the CPU (gathered objects are pickled)."""
    for name, value in vars(estimator).items():
        if isinstance(value, torch.Tensor):
            setattr(estimator, name, value.cpu())
        elif hasattr(value, "__dict__") and any(isinstance(v, torch.Tensor) for v in vars(value).values()):
            _to_cpu(value)
    return estimator
