"""report.html: built with the run or afterwards, self-contained, escaped, and readable."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import pooljob.job.run
from pooljob.errors import ConfigError, PublishError
from pooljob.job.cli import main
from pooljob.job.demo import write_demo_data
from pooljob.outputs.report import REPORT, build_report
from pooljob.outputs.report_data import level_frame, load_run, resolve_grouping, select_groups
from pooljob.outputs.report_figures import require_matplotlib
from tests.helpers import tree_digest, write_rows

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NETWORK = ("http://", "https://", "//cdn", "<script", "<link", "<iframe", "@import", "url(http")


def _demo_config(folder: Path, **output: object) -> Path:
    out = {"path": "out", "keep_runs": 3, **output}
    lines = [
        "[source]",
        'path = "data/**/*.parquet"',
        "[model]",
        'formula = "income ~ 1 + (1 | state/county/zip)"',
        "[output]",
        *(f"{k} = {json.dumps(v)}" for k, v in out.items()),
    ]
    cfg = folder / "job.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo job (20,000 rows, state/county/zip) run with ``report = true``."""
    folder = tmp_path_factory.mktemp("demo")
    write_demo_data(folder / "data")
    assert main(["--quiet", "run", str(_demo_config(folder, report=True))]) == 0
    return folder / "out" / "current"


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The error on stderr, checked to be one line (log lines aside) with no traceback."""
    lines = [
        line for line in capsys.readouterr().err.splitlines() if not line.startswith("pooljob ")
    ]
    assert len(lines) == 1 and lines[0].startswith("pooljob: error: "), lines
    return lines[0]


def test_job_publishes_the_report_with_the_run(demo_run: Path) -> None:
    assert (demo_run / REPORT).is_file()
    names = sorted(p.name for p in demo_run.iterdir())
    assert REPORT in names and not [n for n in names if n.startswith(".")]
    manifest = json.loads((demo_run / "manifest.json").read_text())
    assert REPORT in manifest["outputs"]
    assert manifest["config"]["output"]["report"] is True


def test_report_has_the_figures_and_tables(demo_run: Path) -> None:
    text = (demo_run / REPORT).read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # pull, caterpillar, shrinkage for the finest grouping; a pull figure for each other one
    assert text.count("<svg") == 5
    assert text.count("<figure>") == 5
    assert "Partial pooling: zip:(county:state)" in text
    assert "Showing 40 of 219 groups" in text  # the pull figure samples, and says so
    assert "σ² / (σ² + n τ²)" in text
    for heading in (
        "Variance components",
        "Fixed effects",
        "Fit diagnostics",
        "Rows",
        "Run time per stage",
        "Configuration",
        "Groups pulled furthest",
    ):
        assert f"<h3>{heading}</h3>" in text or f"<h2>{heading}" in text, heading
    for value in ("14,976", "58,157", "20,000", "null group key", "REML criterion", "scan"):
        assert value in text, value
    assert "income ~ 1 + (1 | state/county/zip)" in text


def test_report_links_to_nothing(demo_run: Path) -> None:
    text = (demo_run / REPORT).read_text(encoding="utf-8").lower()
    for needle in NETWORK:
        assert needle not in text, needle
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#|data:)""", text)
    assert "xmlns" not in text


def test_small_groups_are_pulled_toward_their_parent(demo_run: Path) -> None:
    run = load_run(demo_run)
    states, toward = level_frame(run, "state")
    assert toward == "the overall mean"
    dc = states.filter(pl.col("label") == "DC").row(0, named=True)
    assert dc["n"] == 1 and dc["raw_mean"] == 81_500
    # a state's estimate is the mean of its rows' fitted values (its county's and ZIP's
    # effects included); DC's single household still moves it most of the way
    assert abs(dc["estimate"] - dc["parent"]) < 0.4 * abs(dc["raw_mean"] - dc["parent"])
    assert states["pull"].abs().arg_max() == states["label"].to_list().index("DC")
    zips, toward = level_frame(run, "zip:(county:state)")
    assert toward == "county:state" and zips["parent"].null_count() == 0
    ones = zips.filter(pl.col("n") == 1)
    moved = (ones["estimate"] - ones["parent"]).abs() < (ones["raw_mean"] - ones["parent"]).abs()
    assert moved.all()


def test_cli_report_on_an_existing_run_is_deterministic(
    demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_digest(demo_run.resolve())
    in_run = (demo_run / REPORT).read_bytes()
    assert main(["report", str(demo_run), "--output", str(tmp_path / "a.html")]) == 0
    assert f"report written to {tmp_path / 'a.html'}" in capsys.readouterr().out
    assert (tmp_path / "a.html").read_bytes() == in_run  # same run, same bytes
    assert (
        main(["--quiet", "report", str(demo_run), "--grouping", "state", "-o", str(tmp_path)]) == 0
    )
    text = (tmp_path / REPORT).read_text(encoding="utf-8")  # a directory: FILE/report.html
    assert "Partial pooling: state" in text and "<td>DC</td>" in text
    assert tree_digest(demo_run.resolve()) == before  # a published run never changes


def test_cli_report_writes_to_the_working_directory_by_default(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree_digest(demo_run.resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["--quiet", "report", str(demo_run)]) == 0
    assert (tmp_path / REPORT).read_bytes() == (demo_run / REPORT).read_bytes()
    assert tree_digest(demo_run.resolve()) == before


@pytest.mark.parametrize("where", ["run", "file in run", "runs folder"])
def test_cli_report_refuses_to_write_into_a_published_run(
    demo_run: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    before = tree_digest(demo_run.resolve())
    output = {
        "run": demo_run,
        "file in run": demo_run / REPORT,
        "runs folder": demo_run.resolve() / "sub" / "x.html",
    }[where]
    assert main(["report", str(demo_run), "--output", str(output)]) == 2
    err = _error_line(capsys)
    assert "a published run never changes" in err and "--output" in err
    assert tree_digest(demo_run.resolve()) == before


def test_cli_report_without_report_in_the_config(tmp_path: Path) -> None:
    write_rows(tmp_path / "data" / "part-0.parquet")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "data/*.parquet"\n[model]\n'
        'formula = "sales ~ 1 + (1 | region/store)"\n[output]\npath = "out"\n'
    )
    assert main(["--quiet", "run", str(tmp_path / "job.toml")]) == 0
    current = tmp_path / "out" / "current"
    assert not (current / REPORT).exists()
    done = subprocess.run(
        [sys.executable, "-m", "pooljob.job.cli", "report", str(current), "--grouping", "store"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    text = (tmp_path / REPORT).read_text(encoding="utf-8")
    assert "Partial pooling: store:region" in text
    assert not (current / REPORT).exists()
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "has no manifest.json"),
    ],
)
def test_bad_run_dir_is_one_line_and_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, expect: str
) -> None:
    assert main(["report", str(make(tmp_path))]) == 3
    assert expect in _error_line(capsys)


def test_output_path_instead_of_run_dir_says_which_to_use(
    demo_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(demo_run.parent)]) == 3
    assert "current" in _error_line(capsys)


def test_incomplete_run_dir_is_refused(tmp_path: Path, demo_run: Path, capsys) -> None:
    broken = tmp_path / "run"
    shutil.copytree(demo_run, broken)
    (broken / "estimates.parquet").unlink()
    assert main(["report", str(broken)]) == 3
    assert "estimates.parquet is missing" in _error_line(capsys)
    (broken / "manifest.json").write_text("{not json")
    assert main(["report", str(broken)]) == 3
    _error_line(capsys)


def test_unknown_grouping(demo_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(demo_run), "--grouping", "city"]) == 2
    err = _error_line(capsys)
    assert "'city'" in err and "'county:state'" in err
    write_demo_data(tmp_path / "data", rows=500)
    cfg = _demo_config(tmp_path, report=True, report_grouping="city")
    assert main(["run", str(cfg)]) == 2
    assert "[output] report grouping 'city'" in _error_line(capsys)
    assert not (tmp_path / "out" / "current").exists()


def test_report_option_types_are_checked(tmp_path: Path, capsys) -> None:
    write_demo_data(tmp_path / "data", rows=500)
    assert main(["run", str(_demo_config(tmp_path, report="yes"))]) == 2
    assert "[output] report = 'yes' must be true or false" in _error_line(capsys)


def test_grouping_names() -> None:
    names = ("state", "county:state", "zip:(county:state)")
    assert resolve_grouping(names, None) == "zip:(county:state)"
    assert resolve_grouping(names, "zip") == "zip:(county:state)"
    assert resolve_grouping(names, "county") == "county:state"
    assert resolve_grouping(names, "county:state") == "county:state"
    with pytest.raises(ConfigError, match="use one of 'state'"):
        resolve_grouping(names, "town")


def test_missing_matplotlib_is_one_line_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ConfigError, match=r"pip install 'pooljob\[report\]'"):
        require_matplotlib()
    write_demo_data(tmp_path / "data", rows=500)
    assert main(["run", str(_demo_config(tmp_path, report=True))]) == 2
    assert "pooljob[report]" in _error_line(capsys)
    assert not (tmp_path / "out" / "current").exists()


def test_failed_report_leaves_no_half_published_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def broken(directory: Path, grouping: str | None = None) -> Path:
        (directory / REPORT).write_text("<!DOCTYPE html><p>half")
        raise PublishError("cannot write the report: disk full")

    monkeypatch.setattr(pooljob.job.run, "write_report", broken)
    write_demo_data(tmp_path / "data", rows=500)
    assert main(["run", str(_demo_config(tmp_path, report=True))]) == 5
    _error_line(capsys)
    runs = tmp_path / "out" / "runs"
    assert not (tmp_path / "out" / "current").exists()
    assert not runs.exists() or not any(runs.iterdir())  # the partial run was removed


def test_text_from_the_data_is_escaped(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    g = rng.integers(0, 8, 400)
    names = np.array([f'<b>shop "{i}"</b> & co' for i in range(8)])
    y = 10 + rng.normal(0, 2, 8)[g] + rng.normal(0, 3, 400)
    (tmp_path / "data").mkdir()
    pl.DataFrame({"shop": names[g], "y": y}).write_parquet(tmp_path / "data" / "a.parquet")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "data/*.parquet"\n[model]\nformula = "y ~ 1 + (1 | shop)"\n'
        '[output]\npath = "out"\nreport = true\n'
    )
    assert main(["--quiet", "run", str(tmp_path / "job.toml")]) == 0
    text = (tmp_path / "out" / "current" / REPORT).read_text(encoding="utf-8")
    assert "<b>shop" not in text
    assert "&lt;b&gt;shop &quot;0&quot;&lt;/b&gt; &amp; co" in text


def test_many_groups_are_sampled_deterministically(tmp_path: Path) -> None:
    write_rows(tmp_path / "data" / "part-0.parquet", groups=3000, n=12_000, seed=5)
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "data/*.parquet"\n[model]\nformula = "sales ~ 1 + (1 | store)"\n'
        '[output]\npath = "out"\n'
    )
    assert main(["--quiet", "run", str(tmp_path / "job.toml")]) == 0
    run = load_run(tmp_path / "out" / "current")
    frame, _ = level_frame(run, "store")
    subset, note = select_groups(frame, 40)
    again, _ = select_groups(frame.reverse(), 40)
    assert subset.height == 40 and subset.sort("label").equals(again.sort("label"))
    assert subset["n"].min() == frame["n"].min() and subset["n"].max() == frame["n"].max()
    assert note.startswith(f"40 of {frame.height:,} groups")
    text = build_report(tmp_path / "out" / "current")
    assert f"Showing 40 of {frame.height:,} groups" in text
    assert "data:image/png;base64," in text  # the shrinkage scatter is drawn as an image
    assert len(text) < 3_000_000


def test_area_level_shrinkage_is_explained_not_plotted_against_n(tmp_path: Path) -> None:
    """Every area is one row: the report states v_i / (v_i + τ²) and its range instead."""
    data = Path(__file__).parent / "data" / "fh_bcg.csv"
    shutil.copy(data, tmp_path / "bcg.csv")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "bcg.csv"\n[model]\nformula = "yi ~ ablat + (1 | trial)"\n'
        'sampling_variance = "vi"\n[output]\npath = "out"\nreport = true\n'
    )
    assert main(["--quiet", "run", str(tmp_path / "job.toml")]) == 0
    text = (tmp_path / "out" / "current" / REPORT).read_text(encoding="utf-8")
    assert "Shrinkage against group size" not in text
    assert "Area-level (Fay–Herriot) model" in text and "(column vi)" in text
    shrink = pl.read_parquet(tmp_path / "out" / "current" / "estimates.parquet")["shrinkage"]
    assert f"from {float(shrink.min()):.3f} to {float(shrink.max()):.3f}" in text


@pytest.mark.parametrize("family", ["binomial", "Gamma"])
def test_other_families_in_the_manifest_still_report(
    tmp_path: Path, demo_run: Path, family: str
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(demo_run, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["family"] = family
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    text = build_report(run_dir, "state")
    assert "Estimates are on the response scale." in text
    assert text.count("<svg") == 5
    assert "σ² / (σ² + n τ²)" not in text


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(demo_run: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,3000",
            (demo_run / REPORT).resolve().as_uri(),
        ],
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = imread(shot)
    assert pixels.shape[:2] == (3000, 1200)
    rgb = (pixels[..., :3] * 255).round().astype(np.uint32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    values, counts = np.unique(codes, return_counts=True)
    assert len(values) > 200  # text, figures, the palette: far from blank
    assert counts.max() / codes.size < 0.9  # no single colour fills the page
    for colour in (0xD95F02, 0x1B9E77):  # raw means and pooled estimates are drawn
        assert np.isin(colour, values), hex(colour)


def test_core_modules_do_not_import_matplotlib() -> None:
    code = (
        "import sys, pooljob, pooljob.job.cli, pooljob.job.run, pooljob.job.config, "
        "pooljob.outputs.report; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
