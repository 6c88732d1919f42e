"""The memory and CPUs this process may use: the machine's, or a container's limits if lower.

In a container (Docker ``--memory``, a Kubernetes ``resources.limits.memory``)
``sysconf`` still reports the host's RAM; a default sized from it can exceed
the container's limit and get the job killed by the kernel's OOM killer. The
limit is read from the cgroup file system: ``memory.max`` (cgroup v2) or
``memory.limit_in_bytes`` (v1); "max" or an absurdly large value means none. Likewise a CPU quota
(``cpu.max``: "quota period", or v1's ``cpu.cfs_quota_us`` and
``cpu.cfs_period_us``) caps the CPUs at ``ceil(quota / period)``.
"""

from __future__ import annotations

import math
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


_CGROUP_CPU = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "quota period" or "max period"
_CGROUP_V1_CPU = (
    Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)


def cgroup_cpu_limit(v2: Path = _CGROUP_CPU, v1: tuple[Path, Path] = _CGROUP_V1_CPU) -> int | None:
    """The container's CPU quota rounded up to whole CPUs, or None when there is none.

    ``ceil(quota / period)`` from ``cpu.max`` (cgroup v2) or from
    ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (v1, where a quota of -1
    means none).
    """
    try:
        words = v2.read_text().split()
    except OSError:
        try:
            words = [v1[0].read_text().strip(), v1[1].read_text().strip()]
        except OSError:
            return None
    try:
        quota, period = int(words[0]), int(words[1])
    except (ValueError, IndexError):  # "max", or garbage
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def usable_cpus() -> int | None:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cpus: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        cpus = os.cpu_count()
    known = [c for c in (cpus, cgroup_cpu_limit()) if c]
    return min(known) if known else None
