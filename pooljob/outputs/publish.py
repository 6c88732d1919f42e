"""Publish a run atomically: ``runs/<run_id>/`` then swap the ``current`` symlink.

Layout under ``[output] path``::

    current -> runs/<run_id>        the published result (a relative symlink)
    runs/<run_id>/                  complete runs, newest last by name
    runs/.<run_id>.partial/         a run being written (never read)
    .lock                           held for the whole run (pooljob.job.lock)

A run writes everything into its ``.partial`` directory, syncs it, renames it
to ``runs/<run_id>`` and then replaces ``current`` with ``rename(2)`` of a new
symlink, which is atomic: readers see the old run or the new one, never a
mix.  A run that fails before the swap removes what it wrote; one that is
killed leaves ``current`` as it was, and the next run removes its partial
directory.  Errors of the operating system (no space, no permission, a
read-only file system), from Python or from polars, become one-line
:class:`~pooljob.errors.PublishError` messages (exit code 5).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pooljob.durable import fsync_path
from pooljob.errors import PooljobError, PublishError
from pooljob.outputs.oserror import errno_of, os_error

__all__ = ["CURRENT", "RUNS", "fsync_path", "new_run_id", "prune", "publish"]

CURRENT = "current"
RUNS = "runs"

log = logging.getLogger("pooljob")


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC time to the microsecond and the process id."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + f"-{os.getpid()}"


def _discard(*paths: Path) -> None:
    """Remove what a failed run wrote (files, folders or symlinks), quietly."""
    for path in paths:
        if path.is_symlink() or path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def publish(output: Path, run_id: str, write: Callable[[Path], None], keep_runs: int) -> Path:
    """Write a run with ``write(directory)`` and make it ``current``.

    Parameters
    ----------
    output : Path
        ``[output] path``.
    run_id : str
    write : callable
        Writes every file of the run into the directory it is given.
    keep_runs : int
        How many complete runs to keep (the current one always stays).

    Returns
    -------
    Path
        The published run directory.
    """
    runs = output / RUNS
    current = output / CURRENT
    if os.path.lexists(current) and not current.is_symlink():
        raise PublishError(
            f"{str(current)!r} exists and is not a symlink made by pooljob; "
            "move it away or choose another [output] path"
        )
    partial = runs / f".{run_id}.partial"
    final = runs / run_id
    tmp_link = output / f".{CURRENT}.{run_id}"
    made: list[Path] = []  # what this run created, removed if it fails before the swap
    try:
        runs.mkdir(parents=True, exist_ok=True)
        _remove_partials(runs)
        partial.mkdir()
        made.append(partial)
        write(partial)
        for f in partial.iterdir():
            fsync_path(f)
        fsync_path(partial)
        os.rename(partial, final)
        made.append(final)
        fsync_path(runs)
        os.symlink(os.path.join(RUNS, run_id), tmp_link)
        made.append(tmp_link)
        os.replace(tmp_link, current)
    except BaseException as exc:
        _discard(*reversed(made))
        if errno_of(exc) is not None and not isinstance(exc, PooljobError):
            raise os_error("write the run to", partial, exc) from None
        raise
    try:
        fsync_path(output)
    except OSError as exc:  # published: only the sync of the directory entry failed
        log.warning("published %s, but syncing %r failed: %s", run_id, str(output), exc)
    prune(runs, keep_runs, keep=run_id)
    return final


def _remove_partials(runs: Path) -> None:
    """Remove what crashed runs left (safe: the caller holds the lock)."""
    for entry in runs.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".partial"):
            shutil.rmtree(entry, ignore_errors=True)
    for entry in runs.parent.iterdir():
        if entry.name.startswith(f".{CURRENT}.") and entry.is_symlink():
            entry.unlink()


def prune(runs: Path, keep_runs: int, keep: str) -> None:
    """Remove the oldest complete runs beyond ``keep_runs``, never ``keep``."""
    complete = sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))
    excess = len(complete) - keep_runs
    for p in complete:
        if excess <= 0:
            break
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)
            excess -= 1
