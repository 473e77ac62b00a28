"""Progress bars for loops over data: tqdm, silent when not a terminal or when LOWBIT_QUIET=1."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(iterable, description: str, total: int | None = None, unit: str = "batch"):
    """Wrap ``iterable`` in a tqdm bar unless output is not a terminal or LOWBIT_QUIET=1."""
    quiet = os.environ.get("LOWBIT_QUIET") == "1" or not sys.stderr.isatty()
    return tqdm(iterable, desc=description, total=total, disable=quiet, leave=False, unit=unit)
