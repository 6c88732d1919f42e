"""docs/small-area.md runs as written and still prints the numbers it shows.

The page marks its runnable blocks with ``<!-- run -->`` (a Python block, or
a ``sh`` block of ``pooljob …`` lines) or ``<!-- run: FILE -->`` (a TOML
block written to FILE), and the output a block prints with
``<!-- output -->`` on the ``text`` block after it. The blocks run in order
in a temporary folder with ``tests/data`` linked in; Python blocks share one
namespace.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import polars as pl
import pytest

import pooljob
from pooljob.job.cli import main

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "small-area.md"
BLOCK = re.compile(r"<!-- (run(?:: (\S+))?|output) -->\n```(\w+)\n(.*?)```", re.S)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def blocks() -> list[tuple[str, str | None, str, str]]:
    """(kind, file, language, text) of every marked block, in order."""
    text = DOC.read_text(encoding="utf-8")
    return [(m[1].split(":")[0], m[2], m[3], m[4]) for m in BLOCK.finditer(text)]


def run_block(file: str | None, language: str, text: str, names: dict[str, object]) -> str:
    """Run one block in the current folder; what it printed on stdout."""
    if language == "toml":
        assert file is not None, "a TOML block needs <!-- run: FILE -->"
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        Path(file).write_text(text, encoding="utf-8")
        return ""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if language == "python":
            exec(compile(text, str(DOC), "exec"), names)
        else:
            assert language == "sh", language
            for line in text.splitlines():
                args = shlex.split(line)
                assert args[0] == "pooljob", line
                assert main(args[1:]) == 0, line
    return out.getvalue()


def _comparable(text: str) -> tuple[str, list[str]]:
    """The text with its numbers taken out (spacing ignored), and the numbers."""
    lines = [ln for ln in text.strip().splitlines() if not ln.startswith("published:")]
    joined = "\n".join(lines)
    skeleton = re.sub(r"[ ─═]+", " ", NUMBER.sub("#", joined))
    return skeleton, NUMBER.findall(joined)


def _close(got: str, shown: str) -> bool:
    decimals = len(shown.split(".")[1].split("e")[0]) if "." in shown else 0
    a, b = float(got), float(shown)
    return abs(a - b) <= max(1e-3 * abs(b), 1.5 * 10.0**-decimals)


def check_output(got: str, shown: str) -> None:
    got_skeleton, got_numbers = _comparable(got)
    shown_skeleton, shown_numbers = _comparable(shown)
    assert got_skeleton == shown_skeleton, f"printed:\n{got}\nshown:\n{shown}"
    bad = [(g, s) for g, s in zip(got_numbers, shown_numbers, strict=True) if not _close(g, s)]
    assert not bad, f"numbers differ (printed, shown): {bad}\nprinted:\n{got}"


def run_page(folder: Path) -> list[tuple[str, str | None]]:
    """Run the page's blocks in folder: (printed, shown) per runnable block."""
    (folder / "tests").mkdir()
    (folder / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    names: dict[str, object] = {}
    results: list[tuple[str, str | None]] = []
    with contextlib.chdir(folder), pl.Config():
        for kind, file, language, text in blocks():
            if kind == "output":
                assert results and results[-1][1] is None, "an output block follows a run block"
                results[-1] = (results[-1][0], text)
            else:
                results.append((run_block(file, language, text, names), None))
    return results


def test_page_has_runnable_blocks() -> None:
    kinds = [(kind, language) for kind, _, language, _ in blocks()]
    assert kinds.count(("run", "python")) == 5
    assert kinds.count(("run", "toml")) == 3
    assert kinds.count(("run", "sh")) == 3
    assert kinds.count(("output", "text")) == 8


def test_small_area_examples_print_what_the_page_shows(tmp_path: Path) -> None:
    for printed, shown in run_page(tmp_path):
        if shown is not None:
            check_output(printed, shown)
        else:
            assert printed == ""
    # the Python call and the job publish the same estimates
    published = pl.read_parquet(tmp_path / "sae/out/bcg/current/estimates.parquet")
    fh = pooljob.fit(
        "yi ~ ablat + (1 | trial)", ROOT / "tests/data/fh_bcg.csv", sampling_variance="vi"
    )
    assert published.equals(fh.estimates)
    assert pl.read_parquet(tmp_path / "sae/out/sleep/current/poststratified.parquet").height == 3


def test_comparison_tolerates_last_digit_only() -> None:
    check_output("a 0.2515 | 12", "a  0.2516 | 12")
    with pytest.raises(AssertionError):
        check_output("a 0.2535 | 12", "a 0.2515 | 12")
    with pytest.raises(AssertionError):
        check_output("b 0.2515", "a 0.2515")
