"""Multilevel regression and poststratification: a poll that is 92% men.

A population of cells (state × sex × age) with known probabilities; a poll
drawn from it with men and the young heavily over-represented; the model
``vote ~ sex + (1 | state) + (1 | age)`` fitted from the poll's 0/1 rows and
poststratified to the population.  The poststratified state figures must
beat the raw state means against the truth, and the overall figure must be
within one point of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.errors import ConfigError, InputError
from pooljob.job.demo import poll_frames
from pooljob.model.options import PoststratifyConfig
from pooljob.outputs.poststratify import poststratify, read_population

STATES = [f"S{i:02d}" for i in range(25)]
World = tuple[pl.DataFrame, pl.DataFrame, pooljob.FitResult]


def world(seed: int = 7, n: int = 60_000) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(population cells with true probabilities ``p``, poll rows): pooljob's poll demo."""
    poll, pop = poll_frames(n, seed, tuple(STATES))
    return pop, poll


def truth(pop: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    agg = (pl.col("population") * pl.col("p")).sum() / pl.col("population").sum()
    if not by:
        return pop.select(agg.alias("truth"))
    return pop.group_by(by).agg(agg.alias("truth")).sort(by)


@pytest.fixture(scope="module")
def mrp() -> World:
    pop, poll = world()
    result = pooljob.fit("vote ~ sex + (1 | state) + (1 | age)", poll, family="binomial")
    return pop, poll, result


def post(
    result: pooljob.FitResult, pop: pl.DataFrame, tmp: Path, by: list[str], **kw: int
) -> pl.DataFrame:
    path = tmp / "population.parquet"
    pop.drop("p").write_parquet(path)
    config = PoststratifyConfig(str(path), "population", tuple(by), **kw)
    assert result.predictor is not None
    table, _, _ = read_population(result.predictor, config)
    return poststratify(result.predictor, config, 0.95, table)


def test_poll_is_unrepresentative(
    mrp: World,
) -> None:
    _, poll, _ = mrp
    assert (poll["sex"] == "M").mean() > 0.9  # type: ignore[operator]


def test_poststratified_states_beat_raw_means(mrp: World, tmp_path: Path) -> None:
    pop, poll, result = mrp
    table = post(result, pop, tmp_path, ["state"])
    raw = poll.group_by("state").agg(pl.col("vote").mean().alias("raw"))
    both = truth(pop, ["state"]).join(table, on="state").join(raw, on="state")
    rmse_mrp = float(np.sqrt(((both["estimate"] - both["truth"]) ** 2).mean()))  # type: ignore[operator]
    rmse_raw = float(np.sqrt(((both["raw"] - both["truth"]) ** 2).mean()))  # type: ignore[operator]
    assert rmse_mrp < 0.5 * rmse_raw, (rmse_mrp, rmse_raw)
    # the intervals cover the truth for most states
    covered = ((both["lower"] <= both["truth"]) & (both["truth"] <= both["upper"])).mean()
    assert covered is not None and covered >= 0.8  # type: ignore[operator]
    assert (table["population"] > 0).all()


def test_overall_within_one_point(mrp: World, tmp_path: Path) -> None:
    pop, poll, result = mrp
    table = post(result, pop, tmp_path, [])
    assert table.height == 1
    true = float(truth(pop, [])["truth"][0])
    assert abs(float(table["estimate"][0]) - true) < 0.01
    assert abs(float(poll["vote"].mean()) - true) > 0.03  # type: ignore[arg-type]  # raw is off
    assert table["lower"][0] < table["estimate"][0] < table["upper"][0]
    assert table["population"][0] == pop["population"].sum()


def test_draws_are_seeded(mrp: World, tmp_path: Path) -> None:
    pop, _, result = mrp
    a = post(result, pop, tmp_path, ["age"], seed=3, draws=300)
    b = post(result, pop, tmp_path, ["age"], seed=3, draws=300)
    c = post(result, pop, tmp_path, ["age"], seed=4, draws=300)
    assert a.equals(b)
    assert not a["std_error"].equals(c["std_error"])
    assert a["estimate"].equals(c["estimate"])  # the point estimate is not simulated


def test_unseen_state_gets_the_known_parts(mrp: World, tmp_path: Path) -> None:
    pop, _, result = mrp
    new = pop.filter(pl.col("state") == "S00").with_columns(pl.lit("NEW").alias("state"))
    table = post(result, pl.concat([pop, new]), tmp_path, ["state"])
    row = table.filter(pl.col("state") == "NEW").row(0, named=True)
    assert 0 < row["lower"] < row["estimate"] < row["upper"] < 1
    known = table.filter(pl.col("state") == "S00").row(0, named=True)
    # no state effect: fixed and age parts only; wider than a state with data
    assert row["upper"] - row["lower"] > known["upper"] - known["lower"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.drop("age"), "age"),
        (lambda p: p.with_columns(pl.lit(-1).alias("population")), "negative"),
        (lambda p: pl.concat([p, p.head(1)]), "repeat a cell"),
        (
            lambda p: p.with_columns(
                pl.when(pl.int_range(pl.len()) == 0)
                .then(pl.lit("X"))
                .otherwise(pl.col("sex"))
                .alias("sex")
            ),
            "never saw",
        ),
    ],
)
def test_population_that_does_not_match(
    mrp: World,
    tmp_path: Path,
    change: object,
    message: str,
) -> None:
    pop, _, result = mrp
    assert callable(change)
    with pytest.raises(InputError, match=message):
        post(result, change(pop), tmp_path, ["state"])


def test_rows_and_counts_give_the_same_fit() -> None:
    """cbpp as 0/1 rows and as cbind counts: the same estimates; log-likelihoods
    differ by exactly Σ log choose(size, incidence), as glmer's do."""
    from scipy.special import gammaln

    data = Path(__file__).parent / "data" / "cbpp.csv"
    cbpp = pl.read_csv(data, schema_overrides={"herd": pl.String, "period": pl.String})
    counts = pooljob.fit(
        "cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial"
    )
    rows = (
        cbpp.with_columns(pl.int_ranges(0, pl.col("size")).alias("i"))
        .explode("i")
        .with_columns((pl.col("i") < pl.col("incidence")).alias("sick"))
    )
    ones = pooljob.fit("sick ~ period + (1 | herd)", rows, family="binomial")
    assert ones.nobs == int(cbpp["size"].sum())
    for name in ("coefficients", "components"):
        a, b = getattr(counts, name), getattr(ones, name)
        assert np.allclose(
            a["estimate" if name == "coefficients" else "variance"],
            b["estimate" if name == "coefficients" else "variance"],
            rtol=1e-7,
        )
    n, y = cbpp["size"].to_numpy(), cbpp["incidence"].to_numpy()
    lchoose = float((gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)).sum())
    assert ones.loglik == pytest.approx(counts.loglik - lchoose, rel=1e-10)
    ref = json.loads((data.parent / "cbpp_binomial_tight.json").read_text())
    assert counts.loglik == pytest.approx(ref["loglik"], rel=1e-9)


def test_python_api_poststratify(mrp: World) -> None:
    pop, _, result = mrp
    table = pooljob.poststratify(result, pop.drop("p"), "population", by=["sex"], draws=200)
    assert table["sex"].to_list() == ["F", "M"]
    assert table.columns == ["sex", "estimate", "std_error", "lower", "upper", "population"]


def test_job_publishes_poststratified(tmp_path: Path) -> None:
    from pooljob.job.config import load_config
    from pooljob.job.run import run

    pop, poll = world(n=4000)
    poll.write_parquet(tmp_path / "poll.parquet")
    pop.drop("p").write_parquet(tmp_path / "population.parquet")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "poll.parquet"\n'
        '[model]\nformula = "vote ~ sex + (1 | state) + (1 | age)"\nfamily = "binomial"\n'
        '[output]\npath = "out"\n'
        '[poststratify]\npath = "population.parquet"\nweight = "population"\n'
        'by = ["state"]\ndraws = 200\n'
    )
    outcome = run(load_config(tmp_path / "job.toml"))
    table = pl.read_parquet(outcome.run_dir / "poststratified.parquet")
    assert table.columns == ["state", "estimate", "std_error", "lower", "upper", "population"]
    assert table.height == len(STATES)
    manifest = json.loads((outcome.run_dir / "manifest.json").read_text())
    assert "poststratified.parquet" in manifest["outputs"]
    assert manifest["family"] == "binomial" and manifest["method"] == "laplace"
    assert manifest["loglik"] == pytest.approx(outcome.result.loglik)


def test_poststratify_config_problems(tmp_path: Path) -> None:
    from pooljob.job.config import parse_config

    raw = {
        "source": {"path": "x.parquet"},
        "model": {"formula": "y ~ 1 + (1 | g)"},
        "output": {"path": "out"},
        "poststratify": {"path": "pop.parquet", "weight": "n", "by": "state"},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw, tmp_path / "c.toml")
    assert "family" not in str(err.value)  # gaussian models poststratify too
    assert "[poststratify] by = 'state' must be a list of column names" in str(err.value)
    area = {**raw, "model": {"formula": "y ~ 1 + (1 | g)", "sampling_variance": "vi"}}
    area["poststratify"] = {"path": "pop.parquet", "weight": "n"}
    with pytest.raises(ConfigError, match="does not apply to an area-level model"):
        parse_config(area, tmp_path / "c.toml")
