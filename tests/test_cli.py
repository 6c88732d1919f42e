"""The command line: exit codes, one-line errors, the published layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import pooljob
from pooljob.job.cli import main
from tests.helpers import write_config, write_rows


@pytest.fixture
def job(tmp_path: Path) -> Path:
    write_rows(tmp_path / "data" / "part-0.parquet")
    return write_config(tmp_path)


def test_run_publishes_all_outputs(job: Path, capsys) -> None:
    assert main(["run", str(job)]) == 0
    out = capsys.readouterr().out
    assert "sales ~ 1 + (1 | region/store)" in out
    assert "published:" in out
    current = job.parent / "out" / "current"
    assert current.is_symlink()
    files = sorted(p.name for p in current.iterdir())
    assert files == [
        "coefficients.parquet",
        "components.parquet",
        "effects.parquet",
        "estimates.parquet",
        "manifest.json",
    ]
    est = pl.read_parquet(current / "estimates.parquet")
    assert est.columns == [
        "grouping",
        "region",
        "store",
        "n",
        "raw_mean",
        "estimate",
        "parent",
        "std_error",
        "lower",
        "upper",
        "shrinkage",
        "rmse",
        "estimate_unbenchmarked",
    ]
    assert est["rmse"].null_count() == est.height  # area-level models only
    assert est.schema["store"] == pl.Int64  # original key types survive
    assert est.filter(pl.col("grouping") == "region")["store"].null_count() == 2
    eff = pl.read_parquet(current / "effects.parquet")
    assert eff.columns == ["grouping", "level", "region", "store", "term", "estimate", "cond_sd"]
    assert set(eff["grouping"]) == {"region", "store:region"}
    assert eff.filter(pl.col("grouping") == "store:region")["level"][0].endswith(":east")
    comp = pl.read_parquet(current / "components.parquet")
    assert comp.columns == ["grouping", "term1", "term2", "variance", "sd"]
    assert comp["grouping"].to_list() == ["store:region", "region", "Residual"]
    m = json.loads((current / "manifest.json").read_text())
    for key in (
        "formula",
        "family",
        "method",
        "nobs",
        "groups",
        "objective",
        "loglik",
        "converged",
        "singular",
        "optimizer",
        "rows",
        "config",
        "versions",
        "timings_seconds",
        "run_id",
        "started_at",
        "finished_at",
    ):
        assert key in m, key
    assert m["groups"] == {"store:region": 12, "region": 2}
    assert set(m["optimizer"]) >= {"initial", "final", "evaluations", "message", "converged"}
    assert m["rows"] == {
        "read": 600,
        "used": 600,
        "dropped": {
            "null_group_key": 0,
            "null_response": 0,
            "nonfinite_response": 0,
            "unusable_covariate": 0,
        },
    }
    assert m["run_id"] == Path(current.readlink()).name


def test_keep_runs_prunes_oldest(job: Path) -> None:
    for _ in range(4):
        assert main(["--quiet", "run", str(job)]) == 0
    runs = sorted(p.name for p in (job.parent / "out" / "runs").iterdir())
    assert len(runs) == 2
    assert (job.parent / "out" / "current").readlink().name == runs[-1]


def test_config_error_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[source]\npath = "x.parquet"\n[model]\nformula = "log(y) ~ x"\n')
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("pooljob: error: config")
    assert "response 'log(y)'" in err and "missing section [output]" in err


def test_missing_column_exit_3_lists_columns(job: Path, capsys) -> None:
    write_config(job.parent, formula="sales ~ 1 + (1 | region/shop)")
    assert main(["run", str(job)]) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("pooljob: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0]
    err = errors[0]
    assert "'shop'" in err and "available columns: region, store, sales" in err
    assert "Traceback" not in err


def test_no_traceback_unless_verbose(job: Path) -> None:
    write_config(job.parent, formula="sales ~ 1 + (1 | region/shop)")
    quiet = subprocess.run(
        [sys.executable, "-m", "pooljob.job.cli", "run", str(job)], capture_output=True, text=True
    )
    assert quiet.returncode == 3
    assert "Traceback" not in quiet.stderr
    loud = subprocess.run(
        [sys.executable, "-m", "pooljob.job.cli", "--verbose", "run", str(job)],
        capture_output=True,
        text=True,
    )
    assert loud.returncode == 3
    assert "Traceback" in loud.stderr


def test_validate(job: Path, capsys) -> None:
    assert main(["validate", str(job)]) == 0
    assert "is valid" in capsys.readouterr().out
    assert not (job.parent / "out").exists()


def test_console_script_is_installed(job: Path) -> None:
    exe = Path(sys.executable).parent / "pooljob"
    if not exe.exists():
        pytest.skip("the pooljob console script is not installed in this environment")
    res = subprocess.run([str(exe), "--quiet", "run", str(job)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_bare_pooljob_prints_help_and_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pooljob.job.cli"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("usage: pooljob") and "exit codes:" in done.stderr


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"pooljob {pooljob.__version__}\n"
    assert pooljob.__version__ == "0.1.0"
