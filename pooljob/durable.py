"""Durable writes: a file or folder flushed to disk, so that a rename in it survives a crash.

Shared by the outputs (publishing a run) and the scan (the statistics store).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file or a directory to disk (a directory, so a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
