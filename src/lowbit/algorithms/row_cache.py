"""Fixed-size storage of (input patch, target output) rows for one layer: in memory up to a byte
limit, past it in a temporary file on disk (memory-mapped), removed when closed."""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import torch


class RowCache:
    """Up to ``rows`` rows (float32 inputs of ``input_shape``, targets of ``target_shape``: a layer's input patch and
    output, or a whole sample for a block) filled by :meth:`append`. Use as a context manager."""

    def __init__(self, rows: int, input_shape: tuple[int, ...], target_shape: tuple[int, ...], memory_limit: int):
        input_size, target_size = math.prod(input_shape), math.prod(target_shape)
        self.on_disk = rows * 4 * (input_size + target_size) > memory_limit
        self._path = None
        if self.on_disk:
            handle, self._path = tempfile.mkstemp(prefix="lowbit-rows-", suffix=".bin")
            os.close(handle)
            inputs = np.memmap(self._path, np.float32, "w+", shape=(rows,) + tuple(input_shape))
            targets = np.memmap(self._path, np.float32, "r+", offset=4 * rows * input_size,
                                shape=(rows,) + tuple(target_shape))
            self.inputs, self.targets = torch.from_numpy(inputs), torch.from_numpy(targets)
        else:
            self.inputs = torch.empty((rows,) + tuple(input_shape))
            self.targets = torch.empty((rows,) + tuple(target_shape))
        self.count = 0

    def append(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Store a batch of rows after the previous ones (rows past the capacity are dropped)."""
        take = min(inputs.shape[0], self.inputs.shape[0] - self.count)
        self.inputs[self.count:self.count + take] = inputs[:take].detach().float().cpu()
        self.targets[self.count:self.count + take] = targets[:take].detach().float().cpu()
        self.count += take

    def sample(self, size: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` rows drawn uniformly (with replacement) from the stored ones, on ``device``."""
        chosen = torch.randint(self.count, (size,), generator=generator)
        if self.on_disk:
            chosen = chosen.sort().values
        return self.inputs[chosen].to(device), self.targets[chosen].to(device)

    def all(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Every stored row, on ``device``."""
        return self.inputs[:self.count].to(device), self.targets[:self.count].to(device)

    def chunks(self, device, chunk_bytes: int = 1 << 26):
        """Every stored row in consecutive chunks of about ``chunk_bytes``, on ``device``."""
        row_bytes = 4 * (self.inputs[0].numel() + self.targets[0].numel())
        size = max(1, chunk_bytes // row_bytes)
        for first in range(0, self.count, size):
            last = min(first + size, self.count)
            yield self.inputs[first:last].to(device), self.targets[first:last].to(device)

    def mean_squared(self, error, device, chunk: int) -> float:
        """Mean of ``error(inputs, targets)``² over every stored row, taken ``chunk`` rows at a time on ``device``."""
        total, count = 0.0, 0
        for first in range(0, self.count, chunk):
            targets = self.targets[first:first + chunk].to(device)
            total += float(error(self.inputs[first:first + chunk].to(device), targets).pow(2).sum())
            count += targets.numel()
        return total / max(count, 1)

    def close(self) -> None:
        """Release the rows and delete the file, if any."""
        self.inputs = self.targets = None
        if self._path is not None:
            os.unlink(self._path)
            self._path = None

    def __enter__(self) -> "RowCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
