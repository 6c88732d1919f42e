"""Publishing: a failed, crashed or concurrent run never changes what `current` shows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pooljob.errors import LockHeldError, PublishError
from pooljob.job import run as job_module
from pooljob.job.cli import main
from pooljob.job.config import load_config
from pooljob.job.lock import LOCK, output_lock
from tests.helpers import tree_digest, write_config, write_rows


@pytest.fixture
def published(tmp_path: Path) -> Path:
    write_rows(tmp_path / "data" / "part-0.parquet")
    cfg = write_config(tmp_path)
    assert main(["--quiet", "run", str(cfg)]) == 0
    return cfg


def test_bad_input_leaves_current_unchanged(published: Path) -> None:
    out = published.parent / "out"
    before = tree_digest(out)
    (published.parent / "data" / "part-0.parquet").write_bytes(b"not parquet")
    assert main(["--quiet", "run", str(published)]) == 3
    assert tree_digest(out) == before


def test_failure_while_writing_leaves_current_unchanged(published: Path, monkeypatch) -> None:
    out = published.parent / "out"
    before = tree_digest(out)

    def boom(table, path, *a, **k):
        raise OSError(28, "No space left on device")

    import pyarrow.parquet as pq

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(PublishError, match="no space left"):
        job_module.run(load_config(published))
    assert tree_digest(out) == before
    assert not list((out / "runs").glob(".*.partial"))


def test_killed_run_leaves_current_unchanged_and_next_run_succeeds(published: Path) -> None:
    out = published.parent / "out"
    link_before = os.readlink(out / "current")
    current_before = tree_digest(out / "current")
    # a run killed with SIGKILL in the middle of writing its outputs
    code = (
        "import os, signal, pyarrow.parquet as pq\n"
        "from pooljob.job.cli import main\n"
        "orig = pq.write_table\n"
        "calls = []\n"
        "def write(*a, **k):\n"
        "    orig(*a, **k)\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "pq.write_table = write\n"
        f"main(['--quiet', 'run', {str(published)!r}])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert res.returncode == -9
    assert (out / LOCK).exists()  # the killed run's lock and partial run are left behind ...
    assert list((out / "runs").glob(".*.partial"))
    assert os.readlink(out / "current") == link_before
    assert tree_digest(out / "current") == current_before
    # ... and the next run detects the dead holder, takes over and publishes
    assert main(["--quiet", "run", str(published)]) == 0
    assert not list((out / "runs").glob(".*.partial"))
    assert os.readlink(out / "current") != link_before


def test_live_lock_fails_fast_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out), pytest.raises(LockHeldError) as info, output_lock(out):
        pass
    msg = str(info.value)
    assert f"process {os.getpid()}" in msg and socket.gethostname() in msg


def test_stale_lock_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    (out / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 0}))
    with output_lock(out):
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    assert not (out / LOCK).exists()


def test_current_that_is_not_a_symlink_is_refused(tmp_path: Path) -> None:
    write_rows(tmp_path / "data" / "part-0.parquet")
    cfg = write_config(tmp_path)
    (tmp_path / "out" / "current").mkdir(parents=True)
    assert main(["--quiet", "run", str(cfg)]) == 5


def test_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    write_rows(tmp_path / "data" / "part-0.parquet")
    cfg = write_config(tmp_path)
    (tmp_path / "out").mkdir()
    os.chmod(tmp_path / "out", 0o500)
    try:
        assert main(["--quiet", "run", str(cfg)]) == 5
    finally:
        os.chmod(tmp_path / "out", 0o700)
