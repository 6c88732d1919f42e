"""Progress a person can watch: the status line on a terminal, stage events in JSON, --quiet."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pooljob.job.cli import build_parser, main
from pooljob.job.progress import CLEAR, Progress, progress_mode
from pooljob.model.formula import parse_formula
from pooljob.pipeline import fit_source
from pooljob.scan.source import open_data
from tests.helpers import write_config, write_rows

#: The stages a run of the nested Gaussian job goes through, in order.
STAGES = ["scan", "fit", "tables", "write", "publish", "state"]
_CLI = [sys.executable, "-m", "pooljob.job.cli"]


@pytest.fixture
def job(tmp_path: Path) -> Path:
    write_rows(tmp_path / "data" / "part-0.parquet")
    return write_config(tmp_path)


def _in_pty(args: list[str], cwd: Path, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``pooljob ARGS`` with stderr on a pseudo-terminal, stdout to a file."""
    master, slave = pty.openpty()
    out = cwd / "stdout.txt"
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [*_CLI, *args], stdin=subprocess.DEVNULL, stdout=stdout, stderr=slave, cwd=cwd
        )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"pooljob {args} did not finish in {timeout} s")
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        os.close(master)
    err = b"".join(chunks).decode().replace("\r\n", "\n")
    return code, out.read_text(), err


def _screen(text: str) -> list[str]:
    """What stays on the terminal: ``\\r`` returns to the line's start, ``ESC[K`` erases."""
    lines = []
    for raw in text.split("\n"):
        line, col = "", 0
        for part in re.split(r"(\r|\x1b\[K)", raw):
            if part == "\r":
                col = 0
            elif part == "\x1b[K":
                line = line[:col]
            else:
                line = line[:col] + part + line[col + len(part) :]
                col += len(part)
        lines.append(line)
    return lines


def _masked(summary: str) -> str:
    return re.sub(r"runs/\S+", "runs/ID", summary)


def test_a_terminal_shows_each_stage_in_place_and_clears_it(job: Path) -> None:
    code, out, err = _in_pty(["run", str(job)], job.parent)
    assert code == 0, err
    for stage in ("scan", "fit", "tables", "write", "publish"):
        assert re.search(rf"{re.escape(CLEAR)}{stage}: .*\(\d+\.\d s\)", err), stage
    screen = [line for line in _screen(err) if line]
    assert screen and all(line.startswith("pooljob INFO: ") for line in screen), screen
    for stage in ("scan", "fit", "tables", "write", "publish"):
        assert any(line.startswith(f"pooljob INFO: {stage}: ") for line in screen)
    assert "published: " in out and "\r" not in out and "\x1b" not in out  # stdout untouched


def test_quiet_on_a_terminal_shows_nothing(job: Path) -> None:
    code, out, err = _in_pty(["--quiet", "run", str(job)], job.parent)
    assert code == 0
    assert out == "" and err == ""


def test_quiet_emits_nothing_on_success(job: Path, capsys) -> None:
    assert main(["--quiet", "run", str(job)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_json_has_stage_start_and_end_in_order(job: Path, capsys) -> None:
    assert main(["run", str(job)]) == 0
    text = capsys.readouterr().out
    assert main(["--log-format", "json", "run", str(job), "--full"]) == 0
    captured = capsys.readouterr()
    assert _masked(captured.out) == _masked(text)  # the summary on stdout is the same
    records = [json.loads(line) for line in captured.err.splitlines()]
    stages = [r for r in records if r["event"] in ("stage_start", "stage_end")]
    assert [(r["event"], r["stage"]) for r in stages] == [
        (event, stage) for stage in STAGES for event in ("stage_start", "stage_end")
    ]
    for r in stages:
        assert r["level"] == "info" and r["run_id"] == records[0]["run_id"]
        if r["event"] == "stage_end":
            assert isinstance(r["seconds"], float) and r["seconds"] >= 0.0
            assert r["status"] == "ok"
    assert "\r" not in captured.err


def test_json_stage_end_says_failed(job: Path, capsys) -> None:
    text = job.read_text().replace("[model]\n", "[model]\nmax_evaluations = 1\n")
    job.write_text(text)
    assert main(["--log-format", "json", "run", str(job)]) == 6
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    ends = [r for r in records if r["event"] == "stage_end"]
    assert ends[-1]["stage"] == "fit" and ends[-1]["status"] == "failed"
    assert records[-1]["event"] == "error"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_mode() -> None:
    assert progress_mode("text", False, _Terminal()) == "terminal"
    assert progress_mode("text", False, io.StringIO()) == "off"  # a pipe, a file, cron
    assert progress_mode("json", False, _Terminal()) == "events"
    assert progress_mode("text", True, _Terminal()) == "off"
    assert progress_mode("json", True, io.StringIO()) == "off"


def test_the_fit_line_shows_evaluations_and_the_best_criterion() -> None:
    stream = _Terminal()
    progress = Progress("terminal", stream, interval=0.0)
    with progress.running(), progress.stage("fit"):
        progress.evaluation(1, 1234.5)
        progress.evaluation(2, 1200.25)
    text = stream.getvalue()
    assert "fit: 2 evaluations, best criterion 1,200.25 (" in text
    assert text.endswith(CLEAR) and _screen(text) == [""]


def test_the_fit_line_is_redrawn_a_few_times_a_second_at_most() -> None:
    stream = _Terminal()
    progress = Progress("terminal", stream, interval=10.0)
    with progress.stage("fit"):
        for k in range(1, 1001):
            progress.evaluation(k, 1.0 / k)
    assert stream.getvalue().count(CLEAR) <= 2  # the stage's first line, and its clearing


def test_the_scan_line_shows_duckdb_progress_and_files() -> None:
    stream = _Terminal()
    progress = Progress("terminal", stream, interval=0.0)
    with progress.stage("scan"), progress.probing(lambda: 42.0, files=3):
        progress._draw()
    assert "scan: 42% done of 3 files (" in stream.getvalue()


@contextmanager
def _frame() -> Iterator[pl.DataFrame]:
    rng = np.random.default_rng(5)
    g = rng.integers(0, 8, 400)
    h = rng.integers(0, 5, 400)
    y = 10 + rng.normal(0, 2, 8)[g] + rng.normal(0, 1, 5)[h] + rng.normal(0, 3, 400)
    yield pl.DataFrame({"g": g, "h": h, "region": g % 2, "y": y, "hit": (y > 10).astype(np.int64)})


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []
        self.stages: list[str] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.stages.append(name)
        yield

    def evaluation(self, evaluations: int, best: float) -> None:
        self.calls.append((evaluations, best))


@pytest.mark.parametrize(
    ("formula", "family", "method"),
    [
        ("y ~ 1 + (1 | region/g)", "gaussian", "reml"),  # the tree solver
        ("y ~ 1 + (1 | g) + (1 | h)", "gaussian", "ml"),  # the blocked solver
        ("hit ~ 1 + (1 | g)", "binomial", "laplace"),  # the Laplace solver
    ],
)
def test_the_fit_callback_counts_up_and_changes_nothing(
    formula: str, family: str, method: str
) -> None:
    parsed = parse_formula(formula)
    with _frame() as frame, open_data(frame) as src:
        plain = fit_source(parsed, src, family, method, 0.95)
        watched = _Recorder()
        seen = fit_source(parsed, src, family, method, 0.95, watch=watched)
    counts = [n for n, _ in watched.calls]
    assert counts == list(range(1, len(counts) + 1))  # one call per evaluation, in order
    assert counts[-1] == seen.optimizer["evaluations"]
    bests = [b for _, b in watched.calls]
    assert all(b1 <= b0 for b0, b1 in itertools.pairwise(bests))
    assert watched.stages == ["scan", "fit", "tables"]
    # DuckDB's parallel sums may round differently between two scans of the same
    # data (the last bit of a cell's moments), so "unchanged" is to that rounding
    assert seen.objective == pytest.approx(plain.objective, rel=1e-12)
    np.testing.assert_allclose(seen.optimizer["final"], plain.optimizer["final"], rtol=1e-8)
    for name in ["estimates", "coefficients"]:
        a, b = getattr(seen, name), getattr(plain, name)
        assert a.columns == b.columns and a.height == b.height
        for column in ["estimate", "std_error"]:
            np.testing.assert_allclose(a[column], b[column], rtol=1e-9, err_msg=column)


def test_every_option_of_every_command_has_help() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {"run", "validate", "explain", "demo-data", "report", "predict"}
    for name, command in [("pooljob", parser), *sub.choices.items()]:
        for action in command._actions:
            if action is sub or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert "default" in action.help, f"{name} {action.option_strings}: no default"
        assert "--verbose" in command.format_help()
