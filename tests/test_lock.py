"""The output lock: fail fast on a live holder, take over a crashed one, report other hosts."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pooljob.errors import LockHeldError
from pooljob.job import lock as lock_module
from pooljob.job.cli import main
from pooljob.job.lock import LOCK, LockRecord, my_record, output_lock
from tests.helpers import write_config, write_rows


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def _write_record(out: Path, **fields: object) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    record = {**vars(my_record()), **fields}
    (out / LOCK).write_text(json.dumps(record))
    return out / LOCK


def test_record_names_the_holder_and_the_file_goes_on_release(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out, "run-1") as me:
        record = json.loads((out / LOCK).read_text())
        assert record["pid"] == os.getpid() == me.pid
        assert record["host"] == socket.gethostname()
        assert record["run_id"] == "run-1"
        assert abs(record["started"] - time.time()) < 60
    assert not (out / LOCK).exists()


def test_second_run_fails_fast_with_exit_4_naming_the_holder(tmp_path: Path, capsys) -> None:
    write_rows(tmp_path / "data" / "part-0.parquet")
    cfg = write_config(tmp_path)
    with output_lock(tmp_path / "out", "the-first-run"):
        t0 = time.perf_counter()
        assert main(["--quiet", "run", str(cfg)]) == 4
        assert time.perf_counter() - t0 < 2.0  # before any scan
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"process {os.getpid()} on host {socket.gethostname()}" in err
    assert "run the-first-run" in err
    assert re.search(r"started \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", err)
    assert "still running" in err


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    pid = _dead_pid()
    _write_record(out, pid=pid, proc_start=None)
    with caplog.at_level(logging.WARNING, logger="pooljob"), output_lock(out):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    assert f"process {pid}" in caplog.text and "crashed run" in caplog.text
    assert not (out / LOCK).exists()


def test_reused_pid_and_earlier_boot_are_stale(tmp_path: Path) -> None:
    out = tmp_path / "out"
    mine = my_record()
    if mine.proc_start is None:
        pytest.skip("no /proc/<pid>/stat: process start times are not available")
    # our own pid (alive), but recorded with another start time: the id was reused
    _write_record(out, proc_start=mine.proc_start - 1)
    with output_lock(out):
        pass
    # alive pid, but a record from an earlier boot
    _write_record(out, boot_id="00000000-0000-0000-0000-000000000000")
    with output_lock(out):
        pass


def test_lock_of_an_unreaped_process_is_taken_over(tmp_path: Path) -> None:
    """A crashed run whose parent never reaps it (no init in a container) is a zombie: gone."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc: process states are not available")

    def state(pid: int) -> str | None:
        stat = lock_module._proc_stat(pid)
        return stat[0] if stat else None

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while state(child.pid) != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        out = tmp_path / "out"
        _write_record(out, pid=child.pid, proc_start=lock_module._proc_start(child.pid))
        with output_lock(out):
            assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    finally:
        child.wait()


def test_live_process_without_flock_is_not_taken_over(tmp_path: Path) -> None:
    """A file system that ignored flock would leave only the record: it is still honoured."""
    out = tmp_path / "out"
    path = _write_record(out)  # this very process, same start time and boot
    before = path.read_text()
    with pytest.raises(LockHeldError, match="still running"), output_lock(out):
        pass
    assert path.read_text() == before


def test_lock_from_another_host_is_reported_not_broken(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = _write_record(out, host="batch-7.example", pid=_dead_pid(), started=0)
    before = path.read_text()
    with pytest.raises(LockHeldError) as info, output_lock(out):
        pass
    msg = str(info.value)
    assert "host batch-7.example" in msg and "1970-01-01T00:00:00Z" in msg
    assert "another host" in msg and repr(str(path)) in msg
    assert path.read_text() == before


def test_unreadable_record_without_holder_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text("{not json")
    assert LockRecord.parse("{not json") is None
    with output_lock(out):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()


def test_no_second_taker_while_one_takes_over(tmp_path: Path, monkeypatch) -> None:
    """While run A checks the stale record, run B finds the lock held (flock), not stale."""
    out = tmp_path / "out"
    _write_record(out, pid=_dead_pid(), proc_start=None)
    seen: list[str] = []
    original = lock_module.holder_alive

    def check_then_race(record: LockRecord) -> bool:
        if not seen:
            seen.append("A checks")
            with pytest.raises(LockHeldError), output_lock(out):
                seen.append("B got the lock too")
            seen.append("B refused")
        return original(record)

    monkeypatch.setattr(lock_module, "holder_alive", check_then_race)
    with output_lock(out):
        pass
    assert seen == ["A checks", "B refused"]


def test_a_lock_file_removed_while_opening_is_retried(tmp_path: Path, monkeypatch) -> None:
    calls = []
    original = lock_module._same_file

    def first_time_gone(fd: int, path: Path) -> bool:
        calls.append(1)
        return False if len(calls) == 1 else original(fd, path)

    monkeypatch.setattr(lock_module, "_same_file", first_time_gone)
    with output_lock(tmp_path / "out"):
        assert json.loads((tmp_path / "out" / LOCK).read_text())["pid"] == os.getpid()
    assert len(calls) >= 2


# The racers import pooljob.job.lock alone (not the package's numerical stack), to start fast.
_RACER = """
import json, sys, time, types
from pathlib import Path
package = types.ModuleType("pooljob")
package.__path__ = [sys.argv[4]]
sys.modules["pooljob"] = package
from pooljob.errors import LockHeldError
from pooljob.job.lock import output_lock
out, go = Path(sys.argv[1]), Path(sys.argv[2])
Path(sys.argv[3]).touch()
while not go.exists():
    time.sleep(0.001)
try:
    with output_lock(out):
        t0 = time.monotonic()
        time.sleep(0.4)
        t1 = time.monotonic()
    print(json.dumps({"held": [t0, t1]}))
except LockHeldError as exc:
    print(json.dumps({"refused": str(exc)}))
"""


def test_racing_runs_on_one_stale_lock_never_overlap(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_record(out, pid=_dead_pid(), proc_start=None)
    go = tmp_path / "go"
    procs = []
    package = str(Path(lock_module.__file__).parent)
    for i in range(6):
        ready = tmp_path / f"ready-{i}"
        cmd = [sys.executable, "-c", _RACER, str(out), str(go), str(ready), package]
        procs.append((ready, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
    deadline = time.monotonic() + 20
    while not all(r.exists() for r, _ in procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = [json.loads(p.communicate(timeout=30)[0]) for _, p in procs]
    held = sorted(r["held"] for r in results if "held" in r)
    assert held, results
    for (_, end), (start, _) in itertools.pairwise(held):
        assert end <= start, f"two runs held the lock at once: {held}"
    assert len(held) == 1, results  # they all started together and hold it for 0.4 s
    assert not (out / LOCK).exists()
