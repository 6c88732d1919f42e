"""Benchmarking to known totals ([benchmark], issue 12 §6).

The weighted mean of the benchmarked estimates equals each total to 1e-12;
the factor against a hand computation; invariances (column names, row
order); bad tables give one-line errors and publish nothing; the CLI
(run, validate, explain); an incremental refresh equals a full run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.errors import ConfigError, InputError
from pooljob.job.cli import main
from pooljob.model.benchmark import adjustments, apply
from tests.conftest import DATA
from tests.helpers import write_config, write_rows
from tests.test_schema import validate_manifest

PASTES = "strength ~ 1 + (1 | batch/cask)"


@pytest.fixture(scope="module")
def pastes() -> pooljob.FitResult:
    return pooljob.fit(PASTES, DATA / "Pastes.csv")


def _tables(fit: pooljob.FitResult) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Totals per batch (58 to 63) and weights per cask (1, 2, 3, ...)."""
    batches = fit.estimates.filter(pl.col("grouping") == "batch")["batch"].sort()
    totals = pl.DataFrame({"batch": batches, "T": np.linspace(58.0, 63.0, batches.len())})
    casks = fit.estimates.filter(pl.col("grouping") == "cask:batch").select("batch", "cask")
    weights = casks.with_columns(pop=pl.Series(np.arange(1.0, casks.height + 1)))
    return totals, weights


def _weighted_means(est: pl.DataFrame, weights: pl.DataFrame, column: str) -> pl.DataFrame:
    return (
        est.filter(pl.col("grouping") == "cask:batch")
        .join(weights, on=["batch", "cask"])
        .group_by("batch")
        .agg(((pl.col(column) * pl.col("pop")).sum() / pl.col("pop").sum()).alias("m"))
    )


@pytest.mark.parametrize("method", ["ratio", "difference"])
def test_weighted_means_equal_the_totals(pastes: pooljob.FitResult, method: str) -> None:
    totals, weights = _tables(pastes)
    fit = pastes.benchmark(totals, ["batch"], "T", weights, "pop", method=method)
    est = fit.estimates
    means = _weighted_means(est, weights, "estimate").join(totals, on="batch")
    assert means.height == totals.height
    assert float(((means["m"] - means["T"]) / means["T"]).abs().max()) < 1e-12
    batch = est.filter(pl.col("grouping") == "batch").join(totals, on="batch")
    assert np.allclose(batch["estimate"], batch["T"], rtol=1e-14, atol=0)  # its own total
    # the model's estimate is kept; raw_mean, parent, shrinkage are the model's
    assert (
        fit.estimates["estimate_unbenchmarked"].to_list() == pastes.estimates["estimate"].to_list()
    )
    for c in ("n", "raw_mean", "parent", "shrinkage"):
        assert fit.estimates[c].to_list() == pastes.estimates[c].to_list()
    before, after = pastes.estimates, fit.estimates
    if method == "ratio":  # plug-in: every column of the estimate scaled by f
        f = after["estimate"] / before["estimate"]
        for c in ("std_error", "lower", "upper"):
            assert np.allclose(after[c], before[c] * f, rtol=1e-13)
    else:  # shifted by d; std_error as it was
        d = after["estimate"] - before["estimate"]
        assert after["std_error"].to_list() == before["std_error"].to_list()
        for c in ("lower", "upper"):
            assert np.allclose(after[c], before[c] + d, rtol=1e-13)
    record = fit.benchmarked
    assert record is not None and record["method"] == method
    assert record["groupings"] == ["batch", "cask:batch"] and record["totals_unused"] == 0
    assert len(record["groups"]) == 2 * totals.height
    assert pastes.estimates["estimate_unbenchmarked"].null_count() == pastes.estimates.height


def test_the_factor_by_hand(pastes: pooljob.FitResult) -> None:
    # estimates 2 and 4 with weights 1 and 3, total 5: m = (2 + 12) / 4 = 3.5
    adj = adjustments(
        np.array([2.0, 4.0]), np.array([1.0, 3.0]), np.array([0, 0]), np.array([5.0]), "ratio"
    )
    assert adj.mean[0] == 3.5 and adj.weight[0] == 4.0 and adj.members[0] == 2
    assert adj.adjustment[0] == pytest.approx(5 / 3.5, rel=1e-15)
    assert np.allclose(apply(np.array([2.0, 4.0]), adj.adjustment[[0, 0]], "ratio", False),
                       [20 / 7, 40 / 7], rtol=1e-15)  # fmt: skip
    diff = adjustments(
        np.array([2.0, 4.0]), np.array([1.0, 3.0]), np.array([0, 0]), np.array([5.0]), "difference"
    )
    assert diff.adjustment[0] == 1.5
    # batch A of Pastes: the factor from its casks' estimates and weights, by hand
    totals, weights = _tables(pastes)
    fit = pastes.benchmark(totals, ["batch"], "T", weights, "pop")
    casks = pastes.estimates.filter((pl.col("grouping") == "cask:batch") & (pl.col("batch") == "A"))
    w = casks.join(weights, on=["batch", "cask"])["pop"].to_numpy()
    m = float(np.sum(w * casks["estimate"].to_numpy()) / np.sum(w))
    entry = next(
        g for g in fit.benchmarked["groups"]  # type: ignore[index]
        if g["grouping"] == "cask:batch" and g["keys"] == {"batch": "A"}
    )  # fmt: skip
    assert entry["unbenchmarked"] == pytest.approx(m, rel=1e-14)
    assert entry["adjustment"] == pytest.approx(58.0 / m, rel=1e-14)
    assert entry["weight"] == float(np.sum(w)) and entry["members"] == 3


def test_invariant_to_column_names_and_row_order(pastes: pooljob.FitResult) -> None:
    totals, weights = _tables(pastes)
    base = pastes.benchmark(totals, ["batch"], "T", weights, "pop").estimates
    renamed = pastes.benchmark(
        totals.rename({"T": "official rate"}).reverse(),
        ["batch"],
        "official rate",
        weights.rename({"pop": "select"}).sample(fraction=1.0, shuffle=True, seed=4),
        "select",
    ).estimates
    assert renamed.equals(base)
    # the weights as Parquet files, read by path: the same again
    assert base.height == pastes.estimates.height


def test_a_file_path_and_extra_totals(pastes: pooljob.FitResult, tmp_path: Path) -> None:
    totals, weights = _tables(pastes)
    extra = pl.concat([totals, pl.DataFrame({"batch": ["ZZ"], "T": [1.0]})])
    extra.write_parquet(tmp_path / "totals.parquet")
    weights.write_csv(tmp_path / "weights.csv")
    fit = pastes.benchmark(
        tmp_path / "totals.parquet", ["batch"], "T", tmp_path / "weights.csv", "pop"
    )
    assert fit.estimates.equals(pastes.benchmark(totals, ["batch"], "T", weights, "pop").estimates)
    assert fit.benchmarked is not None and fit.benchmarked["totals_unused"] == 1


def test_api_errors(pastes: pooljob.FitResult) -> None:
    totals, weights = _tables(pastes)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"by": ["cask2"]}, ConfigError, r"no grouping of the model has all of these columns"),
        ({"weights": None, "weight": None}, ConfigError, r"needs weight \(the population"),
        ({"weights": None}, InputError, r"has no column 'cask'; available columns: batch, T"),
        ({"method": "raking"}, ConfigError, r"method = 'raking' is not supported"),
        ({"total": "nope"}, InputError, r"has no column 'nope'; available columns: batch, T"),
        ({"totals": totals.tail(-1)}, InputError, r"has no row for batch = 'A'"),
        ({"totals": pl.concat([totals, totals.head(1)])}, InputError, r"rows repeat a key"),
        ({"weights": weights.tail(-1)}, InputError, r"no weight for cask:batch"),
        ({"weights": weights.with_columns(pop=pl.lit(0.0))}, InputError, r"are 0"),
        ({"weights": weights.with_columns(pop=pl.lit(-1.0))}, InputError, r"negative"),
        ({"totals": totals.with_columns(T=pl.lit(None, pl.Float64))}, InputError, r"null or non"),
        ({"totals": totals.with_columns(T=pl.lit(-5.0))}, InputError, r"'difference'"),
    ]
    for change, error, pattern in cases:
        args: dict[str, Any] = {
            "totals": totals, "by": ["batch"], "total": "T", "weights": weights, "weight": "pop"
        } | change  # fmt: skip
        with pytest.raises(error, match=pattern) as info:
            pastes.benchmark(**args)
        assert "\n" not in str(info.value)
    # difference benchmarking is defined whatever the signs
    negative = totals.with_columns(T=pl.lit(-5.0))
    fit = pastes.benchmark(negative, ["batch"], "T", weights, "pop", method="difference")
    means = _weighted_means(fit.estimates, weights, "estimate")
    assert np.allclose(means["m"], -5.0, rtol=1e-12)


# ---------------------------------------------------------------------------
# The job: CLI run, validate, explain; errors publish nothing; incremental refresh.


def _job(folder: Path, extra: str = "", **bench: Any) -> Path:
    """A job on write_rows' data (region/store) with a [benchmark] section."""
    write_rows(folder / "data" / "part-0.parquet", seed=1)
    cfg = write_config(folder)
    pl.DataFrame({"region": ["west", "east"], "rate": [101.0, 99.0]}).write_parquet(
        folder / "totals.parquet"
    )
    stores = np.arange(12)
    pl.DataFrame(
        {
            "region": np.where(stores % 2 == 0, "east", "west"),
            "store": stores,
            "population": 1000.0 + 100.0 * stores,
        }
    ).write_parquet(folder / "population.parquet")
    section = {
        "path": "totals.parquet",
        "by": ["region"],
        "total": "rate",
        "weights_path": "population.parquet",
        "weight": "population",
    } | bench
    lines = ["[benchmark]"] + [
        f"{k} = {json.dumps(v)}" for k, v in section.items() if v is not None
    ]
    cfg.write_text(cfg.read_text() + "\n".join(lines) + "\n" + extra)
    return cfg


def _check_published(out: Path) -> pl.DataFrame:
    est = pl.read_parquet(out / "current" / "estimates.parquet")
    pop = pl.read_parquet(out.parent / "population.parquet")
    means = (
        est.filter(pl.col("grouping") == "store:region")
        .join(pop, on=["region", "store"])
        .group_by("region")
        .agg((pl.col("estimate") * pl.col("population")).sum() / pl.col("population").sum())
        .sort("region")
    )
    assert np.allclose(means["estimate"], [99.0, 101.0], rtol=1e-12, atol=0)
    return est


def test_weights_in_the_totals_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without weights_path: one table, a row per store with its population and region's total."""
    cfg = _job(tmp_path, weights_path=None)
    one = pl.read_parquet(tmp_path / "population.parquet").join(
        pl.read_parquet(tmp_path / "totals.parquet"), on="region"
    )
    one.write_parquet(tmp_path / "totals.parquet")
    assert main(["explain", str(cfg)]) == 0
    assert 'select "region", "store", "population", "rate" from source;' in capsys.readouterr().out
    assert main(["--quiet", "run", str(cfg)]) == 0
    one_table = _check_published(tmp_path / "out")
    two = tmp_path / "two"
    two.mkdir()
    two_cfg = _job(two)
    assert main(["--quiet", "run", str(two_cfg)]) == 0
    numbers = [c for c in one_table.columns if one_table[c].dtype == pl.Float64]
    assert one_table.select(numbers).equals(_check_published(two / "out").select(numbers))
    # a store missing from the one table: the error names that table, not a weights_path
    one.filter(pl.col("store") != 3).write_parquet(tmp_path / "totals.parquet")
    assert main(["--quiet", "run", str(cfg)]) == 3
    err = capsys.readouterr().err.strip()
    assert "totals.parquet' has no weight for store:region" in err, err
    # a total that differs within a region is an error naming the region
    one.with_columns(rate=pl.col("rate") + pl.col("store")).write_parquet(
        tmp_path / "totals.parquet"
    )
    assert main(["--quiet", "run", str(cfg)]) == 3
    err = capsys.readouterr().err.strip()
    assert "takes 6 values within region = " in err and len(err.splitlines()) == 1, err


def test_cli_run_validate_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _job(tmp_path)
    assert main(["--quiet", "validate", str(cfg)]) == 0
    assert main(["validate", str(cfg)]) == 0
    assert "benchmark totals: 2 groups, weights: 12 groups" in capsys.readouterr().out
    assert main(["explain", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert 'select "region", "rate" from source;' in text
    assert 'select "region", "store", "population" from source;' in text
    assert main(["run", str(cfg)]) == 0
    assert "benchmarked (ratio): region, store:region within region" in capsys.readouterr().out
    est = _check_published(tmp_path / "out")
    assert est["estimate_unbenchmarked"].null_count() == 0  # every row is benchmarked here
    manifest = json.loads((tmp_path / "out" / "current" / "manifest.json").read_text())
    validate_manifest(manifest)
    assert manifest["benchmark"]["by"] == ["region"]
    assert manifest["benchmark"]["path"] == str(tmp_path / "totals.parquet")
    assert manifest["timings_seconds"]["benchmark"] >= 0


@pytest.mark.parametrize(
    ("bench", "code", "message"),
    [
        ({"path": "missing.parquet"}, 3, "does not exist"),
        ({"total": "rates"}, 3, "has no column 'rates'; available columns: region, rate"),
        ({"by": ["store"]}, 3, "has no column 'store'"),  # by store: the totals lack it
        ({"by": ["sales"]}, 2, "no grouping of the model has all of these columns"),
        ({"weight": None}, 2, "weights_path needs weight"),
        ({"weights_path": None}, 3, "has no column 'store'; available columns: region, rate"),
        ({"method": "rake"}, 2, "method = 'rake' is not supported"),
        ({"by": "region"}, 2, "by = 'region' must be a list of column names"),
    ],
)
def test_bad_config_or_tables_publish_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    bench: dict[str, Any],
    code: int,
    message: str,
) -> None:
    cfg = _job(tmp_path, **bench)
    assert main(["run", str(cfg)]) == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "current").exists()
    assert main(["validate", str(cfg)]) == code


def test_bad_data_after_the_fit_publishes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _job(tmp_path)
    assert main(["--quiet", "run", str(cfg)]) == 0
    published = (tmp_path / "out" / "current").resolve()
    pl.DataFrame({"region": ["west"], "rate": [101.0]}).write_parquet(tmp_path / "totals.parquet")
    assert main(["--quiet", "run", str(cfg)]) == 3
    err = capsys.readouterr().err.strip()
    assert "has no row for region = 'east'" in err and len(err.splitlines()) == 1
    assert (tmp_path / "out" / "current").resolve() == published  # current unchanged
    assert not list((tmp_path / "out" / "runs").glob(".*partial"))


def test_incremental_refresh_equals_a_full_run(tmp_path: Path) -> None:
    cfg = _job(tmp_path)
    assert main(["--quiet", "run", str(cfg)]) == 0
    write_rows(tmp_path / "data" / "part-1.parquet", seed=2)
    assert main(["--quiet", "run", str(cfg)]) == 0
    manifest = json.loads((tmp_path / "out" / "current" / "manifest.json").read_text())
    assert manifest["refresh"]["mode"] == "incremental"
    refreshed = _check_published(tmp_path / "out")
    full = tmp_path / "full"
    full.mkdir()
    for name in ("data", "totals.parquet", "population.parquet", "job.toml"):
        src = tmp_path / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, full / name)
    assert main(["--quiet", "run", "--full", str(full / "job.toml")]) == 0
    scanned = _check_published(full / "out")
    numbers = [c for c in refreshed.columns if refreshed[c].dtype == pl.Float64]
    assert refreshed.drop(numbers).equals(scanned.drop(numbers))
    for c in numbers:
        a, b = refreshed[c].to_numpy(), scanned[c].to_numpy()
        assert np.allclose(a, b, rtol=1e-10, atol=1e-10, equal_nan=True), c


def test_by_need_not_be_a_grouping_of_its_own(tmp_path: Path) -> None:
    """``(1 | region:store)`` benchmarked to regions: the blocked solver's fit, by = a column."""
    rows = write_rows(tmp_path / "rows.parquet", seed=5)
    fit = pooljob.fit("sales ~ 1 + (1 | region:store)", rows)
    stores = fit.estimates.select("region", "store")
    weights = stores.with_columns(pop=pl.Series(np.linspace(1.0, 3.0, stores.height)))
    totals = pl.DataFrame({"region": ["east", "west"], "T": [90.0, 110.0]})
    out = fit.benchmark(totals, ["region"], "T", weights, "pop").estimates
    means = (
        out.join(weights, on=["region", "store"])
        .group_by("region")
        .agg((pl.col("estimate") * pl.col("pop")).sum() / pl.col("pop").sum())
        .join(totals, on="region")
    )
    assert np.allclose(means["estimate"], means["T"], rtol=1e-12, atol=0)
