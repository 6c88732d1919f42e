"""The output lock: one run at a time per output directory, safe after a crash.

``<output>/.lock`` is held with ``flock(2)`` for the whole run and records
its holder as JSON: process id, host, boot id, the process's start time in
the kernel's clock (to tell a reused process id), the wall-clock start and
the run id.  The kernel drops a flock when its process dies, however it
dies, so:

* while a run holds the lock, another run fails at once
  (:class:`~pooljob.errors.LockHeldError`, exit code 4), naming the holder's
  process id, host and start time;
* a run killed with SIGKILL leaves the file and its record, but no flock.
  The next run takes the flock (atomically: of two runs that find the same
  stale lock, exactly one gets it), checks that the recorded process is gone
  (no such process, a process id reused by a later process, or an earlier
  boot), and writes its own record over it;
* a record from another host is reported and never broken: pooljob cannot
  see processes there, and network file systems do not all share flocks
  between hosts.

The holder removes the file when it is done.  A run that opened the file
just before it was removed could lock the removed file, so after taking the
flock a run checks that it locked the file the path names, and starts again
if not.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pooljob.errors import LockHeldError
from pooljob.outputs.oserror import os_error

LOCK = ".lock"
_ATTEMPTS = 10

log = logging.getLogger("pooljob")


@dataclass(frozen=True)
class LockRecord:
    """Who holds (or held) a lock, as written in the lock file.

    Attributes
    ----------
    pid : int or None
    host : str or None
    started : float or None
        Wall-clock start of the run, seconds since the epoch.
    boot_id : str or None
        ``/proc/sys/kernel/random/boot_id`` of the holder's host (Linux).
    proc_start : int or None
        The holder's start time in clock ticks since boot
        (``/proc/<pid>/stat`` field 22), which a reused process id does not share.
    run_id : str or None
    """

    pid: int | None = None
    host: str | None = None
    started: float | None = None
    boot_id: str | None = None
    proc_start: int | None = None
    run_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> LockRecord | None:
        """The record in ``text``; None for an empty or unreadable file."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None

        def typed(key: str, kind: type | tuple[type, ...]) -> Any:
            value = data.get(key)
            return value if isinstance(value, kind) and not isinstance(value, bool) else None

        return cls(
            pid=typed("pid", int),
            host=typed("host", str),
            started=typed("started", (int, float)),
            boot_id=typed("boot_id", str),
            proc_start=typed("proc_start", int),
            run_id=typed("run_id", str),
        )

    def describe(self) -> str:
        """``process 123 on host h (run …), started 2026-…Z`` for messages."""
        when = (
            datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if self.started is not None
            else "at an unknown time"
        )
        run = f", run {self.run_id}" if self.run_id else ""
        return f"process {self.pid} on host {self.host}{run}, started {when}"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """State letter and start time (clock ticks since boot) of ``pid``; None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the name in (...) may hold spaces
    try:
        return fields[0], int(fields[19])  # fields 3 and 22 of the line
    except (IndexError, ValueError):
        return None


def _proc_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot, or None if unknown."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def my_record(run_id: str | None = None) -> LockRecord:
    """The record of this process."""
    return LockRecord(
        pid=os.getpid(),
        host=socket.gethostname(),
        started=time.time(),
        boot_id=_boot_id(),
        proc_start=_proc_start(os.getpid()),
        run_id=run_id,
    )


def holder_alive(record: LockRecord) -> bool:
    """Whether the process of a record from this host may still be running.

    False when the boot differs, when no process has its id, when that
    process has exited and waits to be reaped (a zombie), or when it started
    at another time (the id was reused).
    """
    if record.pid is None:
        return False
    mine = _boot_id()
    if record.boot_id and mine and record.boot_id != mine:
        return False
    if not _pid_alive(record.pid):
        return False
    stat = _proc_stat(record.pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):
            return False
        if record.proc_start is not None and start != record.proc_start:
            return False
    return True


def _read(fd: int) -> str:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _held_error(output: Path, lock: Path, record: LockRecord | None, me: LockRecord) -> Exception:
    if record is None:
        return LockHeldError(
            f"output {str(output)!r} is locked by another run that is starting "
            f"(its record in {str(lock)!r} is not written yet); try again in a moment"
        )
    if record.host != me.host:
        return LockHeldError(
            f"output {str(output)!r} is locked by {record.describe()}; pooljob cannot check a "
            f"process on another host: if that run is no longer running, remove {str(lock)!r}"
        )
    return LockHeldError(
        f"output {str(output)!r} is locked by {record.describe()}, which is still running; "
        "wait for it to finish (a lock whose process is gone is taken over by the next run)"
    )


def _take(output: Path, lock: Path, me: LockRecord) -> int:
    """Open and flock ``lock``, check the record it holds, write ours; return the fd."""
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise os_error("create the lock file", lock, exc) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _held_error(output, lock, LockRecord.parse(_read(fd)), me) from None
            except OSError as exc:
                raise os_error("lock", lock, exc) from None
            if not _same_file(fd, lock):  # the holder removed it as we opened it
                os.close(fd)
                continue
            text = _read(fd)
            previous = LockRecord.parse(text) if text.strip() else None
            if previous is not None:
                if previous.host != me.host or holder_alive(previous):
                    raise _held_error(output, lock, previous, me)
                log.warning(
                    "taking over the lock of %s, which is gone (a crashed run)",
                    previous.describe(),
                    extra={
                        "event": "lock_takeover",
                        "fields": {"previous": {k: v for k, v in asdict(previous).items() if v}},
                    },
                )
            elif text.strip():
                log.warning(
                    "taking over the lock %r: its record is unreadable and no process holds it",
                    str(lock),
                    extra={"event": "lock_takeover", "fields": {}},
                )
            data = json.dumps(asdict(me)).encode()
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(lock)  # ours: we hold the flock
                raise os_error("write the lock file", lock, exc) from None
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise LockHeldError(
        f"could not take the lock {str(lock)!r}: other runs kept replacing it; try again"
    )


@contextmanager
def output_lock(output: Path, run_id: str | None = None) -> Iterator[LockRecord]:
    """Hold ``<output>/.lock`` for the duration of a run.

    Parameters
    ----------
    output : Path
        ``[output] path``; created if missing.
    run_id : str, optional
        Recorded in the lock, for the message another run gives.

    Yields
    ------
    LockRecord
        This run's record.

    Raises
    ------
    LockHeldError
        A live run holds the lock, or a run on another host recorded it.
    PublishError
        The output directory or the lock file cannot be written.
    """
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error("create the output directory", output, exc) from None
    lock = output / LOCK
    me = my_record(run_id)
    fd = _take(output, lock, me)
    try:
        yield me
    finally:
        try:
            if _same_file(fd, lock):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)  # before the flock goes: see the module docstring
        finally:
            os.close(fd)
