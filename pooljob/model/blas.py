"""Two BLAS threads for large dense factorisations, one for everything else.

pooljob pins OpenBLAS to one thread at import (``pooljob/__init__.py``):
its small dense algebra loses more to waking threads than it gains.  A
dense Cholesky (``potrf``), inverse (``potri``) or triangular solve of
order in the thousands is the opposite: two threads take it from about
28 to about 50 GFLOP/s on a 2-core machine (docs/crossed-at-scale.md).
:func:`threads` raises the thread count of the OpenBLAS libraries that
numpy and scipy loaded, through their ``*_set_num_threads`` entry points
(ctypes), for the duration of a ``with`` block, and restores the count
after it.  Where no OpenBLAS is found (another BLAS, a platform without
these symbols) it does nothing.  ``POOLJOB_BLAS_THREADS`` sets the count
(at most the number of CPUs; 1 turns the feature off).  By default it is 2
only while the machine has a core to spare for it: the 1-minute load
average less this process's own CPU use over the last minute (its threads'
CPU seconds per second, :func:`_own_load`) at most CPUs − 1.5.  On a busy
machine a second thread waits for a core and the factorisation gets
slower, not faster (measured: a 4,000-order ``potrf`` 4 s with one thread,
10 s with two, at a load average of 12 on 2 cores); counting the process's
own work as the others' would switch a fit that runs alone for a minute
back to one thread (its own load reaches 1).
"""

from __future__ import annotations

import ctypes
import glob
import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

#: Order of a dense matrix from which its factorisation gets more threads.
LARGE = 1500


@cache
def _libraries() -> list[tuple[ctypes.CDLL, str, str]]:
    """``(library, setter, getter)`` for each OpenBLAS that numpy or scipy ships."""
    import numpy
    import scipy

    found = []
    for package in (numpy, scipy):
        folder = os.path.dirname(os.path.dirname(package.__file__ or ""))
        libs = os.path.join(folder, f"{package.__name__}.libs", "*openblas*.so*")
        for path in sorted(glob.glob(libs)):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for suffix in ("", "64_"):
                setter, getter = (
                    f"scipy_openblas_set_num_threads{suffix}",
                    f"scipy_openblas_get_num_threads{suffix}",
                )
                if hasattr(lib, setter) and hasattr(lib, getter):
                    found.append((lib, setter, getter))
                    break
    return found


#: ``(monotonic time, CPU seconds of this process)`` samples of the last minute.
_SAMPLES: deque[tuple[float, float]] = deque(
    [(time.monotonic(), os.times().user + os.times().system)]
)


def _own_load() -> float:
    """CPU seconds per second of this process over the last minute (0 in its first second)."""
    now = time.monotonic()
    times = os.times()
    cpu = times.user + times.system
    _SAMPLES.append((now, cpu))
    while len(_SAMPLES) > 2 and now - _SAMPLES[1][0] >= 60.0:
        _SAMPLES.popleft()
    then, before = _SAMPLES[0]
    return (cpu - before) / (now - then) if now - then >= 1.0 else 0.0


def wanted() -> int:
    """Threads for large factorisations: ``POOLJOB_BLAS_THREADS``, else 2 if a core is free.

    A core is free when the 1-minute load average, less this process's own
    recent CPU use, is at most CPUs − 1.5 (module docstring).
    """
    cpus = os.cpu_count() or 1
    raw = os.environ.get("POOLJOB_BLAS_THREADS", "")
    try:
        n = int(raw) if raw else 2
    except ValueError:
        n = 1
    if not raw:
        try:
            if os.getloadavg()[0] - _own_load() > cpus - 1.5:
                n = 1
        except OSError:
            n = 1
    return max(1, min(n, cpus))


@contextmanager
def threads(order: int) -> Iterator[None]:
    """Run the block with :func:`wanted` BLAS threads if ``order ≥ LARGE``, else unchanged."""
    n = wanted()
    if order < LARGE or n <= 1:
        yield
        return
    libs = _libraries()
    before = [int(getattr(lib, get)()) for lib, _, get in libs]
    for lib, set_, _ in libs:
        getattr(lib, set_)(ctypes.c_int(n))
    try:
        yield
    finally:
        for (lib, set_, _), old in zip(libs, before, strict=True):
            getattr(lib, set_)(ctypes.c_int(old))
