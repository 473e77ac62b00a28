"""Atomic file writes: a temp file in the target folder, fsynced, then renamed into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path``: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            os.chmod(handle.name, _new_file_mode())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _new_file_mode() -> int:
    """Permission bits ``open(path, "w")`` would give a new file (the temp file's are 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
