"""The memory this process may use: physical RAM, or a container's limit if lower.

In a container (Docker ``--memory``, a Kubernetes ``resources.limits.memory``)
``sysconf`` still reports the host's RAM; a default sized from it can exceed
the container's limit and get the job killed by the kernel's OOM killer. The
limit is read from the cgroup file system: ``memory.max`` (cgroup v2) or
``memory.limit_in_bytes`` (v1); "max" or an absurdly large value means none.
"""

from __future__ import annotations

import os
from pathlib import Path

_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2 (the container's own group)
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)
_NO_LIMIT = 2**60  # v1 reports "no limit" as a huge page-aligned number


def cgroup_memory_limit(files: tuple[Path, ...] = _CGROUP_LIMITS) -> int | None:
    """The container's memory limit in bytes, or None when there is none.

    Parameters
    ----------
    files
        The cgroup files to read, first found wins (a parameter for tests).
    """
    for file in files:
        try:
            text = file.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            limit = int(text)
        except ValueError:
            return None
        return limit if 0 < limit < _NO_LIMIT else None
    return None


def physical_memory() -> int | None:
    """Physical RAM in bytes (``sysconf``), or None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return None


def usable_memory() -> int | None:
    """``min(physical RAM, cgroup limit)``: what this process can have, if known."""
    known = [m for m in (physical_memory(), cgroup_memory_limit()) if m is not None]
    return min(known) if known else None
