"""Faults: a killed run, a full disk, an unwritable output, a source written during the scan.

In every case `current` stays byte for byte as it was, the error is one line
with its exit code, and the next run succeeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pooljob.job.cli import main
from pooljob.job.lock import LOCK
from pooljob.scan.source import Source
from tests.helpers import tree_digest, write_config, write_rows
from tests.mounts import fill, immutable, read_only, read_only_bind, tmpfs


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """A job whose output has one published run; returns its config."""
    write_rows(tmp_path / "data" / "part-0.parquet")
    cfg = write_config(tmp_path)
    assert main(["--quiet", "run", str(cfg)]) == 0
    return cfg


def _state(out: Path) -> tuple[str, str]:
    return os.readlink(out / "current"), tree_digest(out / "current")


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in [*out.glob(".current.*"), *(out / "runs").glob(".*.partial")]]


# Each stage's patch, run in a child process before `pooljob run`; `die()` is SIGKILL.
_PATCHES = {
    # the statistics scan: DuckDB is reading the source
    "scan": "from pooljob.scan.source import Source\nSource.arrow = die\n",
    # the solver, wherever `fit_nested` was imported to
    "fit": (
        "import pooljob.job.run, pooljob.model.nested_fit\n"
        "rebind(pooljob.model.nested_fit.fit_nested, die)\n"
    ),
    # the outputs: killed after the second Parquet file
    "write": (
        "import pyarrow.parquet as pq\n"
        "orig = pq.write_table\n"
        "calls = []\n"
        "def write(*a, **k):\n"
        "    orig(*a, **k)\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        die()\n"
        "pq.write_table = write\n"
    ),
    # the publish: the run is complete and renamed, `current` not yet swapped
    "publish": (
        "orig = os.replace\n"
        "def replace(src, dst, *a, **k):\n"
        "    if str(dst).endswith('current'):\n"
        "        die()\n"
        "    return orig(src, dst, *a, **k)\n"
        "os.replace = replace\n"
    ),
}

_CHILD = """
import os, signal, sys

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def rebind(original, new):
    for module in list(sys.modules.values()):
        for name, value in list(getattr(module, "__dict__", {}).items()):
            if value is original:
                setattr(module, name, new)

{patch}
from pooljob.job.cli import main
# --full: scan every file, though none changed since the published run
main(["--quiet", "run", "--full", sys.argv[1]])
"""


@pytest.mark.parametrize("stage", list(_PATCHES))
def test_sigkill_at_any_stage_leaves_current_and_next_run_succeeds(
    published: Path, stage: str
) -> None:
    out = published.parent / "out"
    before = _state(out)
    code = _CHILD.replace("{patch}", _PATCHES[stage])
    res = subprocess.run([sys.executable, "-c", code, str(published)], capture_output=True)
    assert res.returncode == -signal.SIGKILL, res.stderr.decode()
    assert (out / LOCK).exists()  # the killed run's lock is left behind ...
    assert _state(out) == before  # ... and `current` is byte for byte as it was
    assert main(["--quiet", "run", str(published)]) == 0  # the dead holder is taken over
    assert _state(out)[0] != before[0]
    assert not _leftovers(out) and not (out / LOCK).exists()


def test_sigterm_cleans_up_and_exits_143(published: Path) -> None:
    out = published.parent / "out"
    before = _state(out)
    patch = (
        "from pooljob.scan.source import Source\n"
        "Source.arrow = lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    code = _CHILD.replace("{patch}", patch).replace("main([", "sys.exit(main([") + ")\n"
    res = subprocess.run(
        [sys.executable, "-c", code, str(published)], capture_output=True, text=True
    )
    assert res.returncode == 143, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("pooljob: terminated by SIGTERM")
    assert _state(out) == before
    assert not (out / LOCK).exists() and not _leftovers(out)


def test_no_space_left_is_one_line_exit_5_and_current_is_kept(tmp_path: Path, capsys) -> None:
    write_rows(tmp_path / "data" / "part-0.parquet")
    cfg = write_config(tmp_path)
    with tmpfs(tmp_path / "out", size="200k") as out:
        assert main(["--quiet", "run", str(cfg)]) == 0
        before = _state(out)
        filler = fill(out, leave=2 * 4096)  # room for the lock and one small file
        capsys.readouterr()
        assert main(["--quiet", "run", str(cfg)]) == 5
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        assert err.startswith("pooljob: error: cannot write the run to")
        assert "no space left on the device" in err and "left as it was" in err
        assert _state(out) == before
        assert not _leftovers(out) and not (out / LOCK).exists()
        filler.unlink()
        assert main(["--quiet", "run", str(cfg)]) == 0


def test_read_only_output_is_one_line_exit_5_and_current_is_kept(tmp_path: Path, capsys) -> None:
    write_rows(tmp_path / "data" / "part-0.parquet")
    cfg = write_config(tmp_path)
    with tmpfs(tmp_path / "out", size="1m") as out:
        assert main(["--quiet", "run", str(cfg)]) == 0
        before = _state(out)
        capsys.readouterr()
        with read_only(out):
            assert main(["--quiet", "run", str(cfg)]) == 5
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        assert "cannot create the lock file" in err and "read-only file system" in err
        assert str(out / LOCK) in err
        assert _state(out) == before
        assert main(["--quiet", "run", str(cfg)]) == 0


def test_read_only_runs_folder_fails_after_the_lock(published: Path, capsys) -> None:
    out = published.parent / "out"
    before = _state(out)
    capsys.readouterr()
    with read_only_bind(out / "runs"):
        assert main(["--quiet", "run", str(published)]) == 5
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "cannot write the run to" in err and "read-only file system" in err
    assert _state(out) == before
    assert not (out / LOCK).exists()


def test_immutable_output_folder_is_exit_5(published: Path, capsys) -> None:
    out = published.parent / "out"
    before = _state(out)
    capsys.readouterr()
    with immutable(out):
        assert main(["--quiet", "run", str(published)]) == 5
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "operation not permitted" in err
    assert _state(out) == before


def test_source_file_rewritten_during_the_scan_is_exit_3(
    published: Path, monkeypatch, capsys
) -> None:
    out = published.parent / "out"
    before = _state(out)
    part = published.parent / "data" / "part-0.parquet"
    original = Source.arrow

    def rewrite_then_read(self: Source, *args: object, **kwargs: object) -> object:
        if not rewritten:
            write_rows(part, seed=9, n=700)  # another writer replaces the file mid-scan
            rewritten.append(True)
        return original(self, *args, **kwargs)

    rewritten: list[bool] = []
    monkeypatch.setattr(Source, "arrow", rewrite_then_read)
    capsys.readouterr()
    assert main(["--quiet", "run", "--full", str(published)]) == 3  # --full: scan, nothing new
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"source file {str(part)!r} was modified" in err and "nothing was published" in err
    assert _state(out) == before
    monkeypatch.undo()
    assert main(["--quiet", "run", str(published)]) == 0  # the writer is done: fine again


def test_source_file_added_during_the_scan_is_exit_3(published: Path, monkeypatch, capsys) -> None:
    late = published.parent / "data" / "part-1.parquet"
    original = Source.arrow

    def add_then_read(self: Source, *args: object, **kwargs: object) -> object:
        if not late.exists():
            write_rows(late, seed=3)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Source, "arrow", add_then_read)
    capsys.readouterr()
    assert main(["--quiet", "run", "--full", str(published)]) == 3  # --full: scan, nothing new
    assert f"source file {str(late)!r} appeared" in capsys.readouterr().err
