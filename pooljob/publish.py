"""Publish a run atomically: ``runs/<run_id>/`` then swap the ``current`` symlink.

Layout under ``[output] path``::

    current -> runs/<run_id>        the published result (a relative symlink)
    runs/<run_id>/                  complete runs, newest last by name
    runs/.<run_id>.partial/         a run being written (never read)
    .lock                           held while a run publishes

A run writes everything into its ``.partial`` directory, syncs it, renames it
to ``runs/<run_id>`` and then replaces ``current`` with ``rename(2)`` of a new
symlink, which is atomic: readers see the old run or the new one, never a
mix.  A run that fails or is killed before the rename leaves ``current`` as
it was; its partial directory is removed by the next run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pooljob.errors import LockHeldError, PublishError

CURRENT = "current"
RUNS = "runs"
LOCK = ".lock"


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC time to the microsecond and the process id."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + f"-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(action: str, path: Path, exc: OSError) -> PublishError:
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.EDQUOT: "disk quota exceeded",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return PublishError(
        f"cannot {action} {str(path)!r}: {reason}; the published output was left as it was"
    )


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold ``<output>/.lock`` for the duration of a run.

    A lock whose holder process is gone (same host) is stale and is taken
    over; a live holder makes this fail fast, naming it.
    """
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error("create the output directory", output, exc) from None
    lock = output / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text(encoding="utf-8") or "{}")
            except (OSError, ValueError):
                holder = {}
            same_host = holder.get("host") == me["host"]
            pid = holder.get("pid")
            if same_host and isinstance(pid, int) and not _pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            started = holder.get("started")
            when = (
                datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds")
                if isinstance(started, int | float)
                else "unknown time"
            )
            raise LockHeldError(
                f"output {str(output)!r} is locked by process {pid} on host "
                f"{holder.get('host', '?')} since {when}; wait for that run to finish "
                f"(or, if it is gone, remove {str(lock)!r})"
            ) from None
        except OSError as exc:
            raise _os_error("lock the output directory", output, exc) from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        break
    else:  # pragma: no cover - only under a race with another stale-lock taker
        raise LockHeldError(f"could not take the lock {str(lock)!r}; try again")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


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
    if current.exists() and not current.is_symlink():
        raise PublishError(
            f"{str(current)!r} exists and is not a symlink made by pooljob; "
            "move it away or choose another [output] path"
        )
    partial = runs / f".{run_id}.partial"
    final = runs / run_id
    try:
        runs.mkdir(parents=True, exist_ok=True)
        _remove_partials(runs)
        partial.mkdir()
        write(partial)
        for f in partial.iterdir():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(partial)
        os.rename(partial, final)
        _fsync_dir(runs)
        tmp_link = output / f".{CURRENT}.{run_id}"
        os.symlink(os.path.join(RUNS, run_id), tmp_link)
        os.replace(tmp_link, current)
        _fsync_dir(output)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise _os_error("write the run to", partial, exc) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
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
