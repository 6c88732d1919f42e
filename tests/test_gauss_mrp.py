"""Poststratification of Gaussian models: exact normal posterior, both solvers.

``estimate = Σ N_c ŷ_c / Σ N_c`` is linear in (β, b); ``std_error`` is
``√(aᵀ C a + prior variance of unseen levels)`` with ``C`` Henderson's
inverse (docs/outputs.md).  The tree solver (one pass up the tree) and the
blocked solver (blocked Cholesky) must publish the same table; both must
match a dense Henderson reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from scipy.stats import norm

import pooljob
from pooljob.model.formula import parse_formula
from pooljob.outputs.tables import FitResult
from pooljob.pipeline import fit_source
from pooljob.scan.source import open_data

NESTED = "y ~ 1 + (1 | a) + (1 | a:b) + (1 | a:b:c)"
NUMBERS = ["estimate", "std_error", "lower", "upper", "population"]


def fit_with(formula: str, data: Any, solver: str) -> FitResult:
    with open_data(data) as source:
        return fit_source(parse_formula(formula), source, "gaussian", "reml", 0.95, solver=solver)


def nested_rows(seed: int = 3, shift: float = 0.0) -> pl.DataFrame:
    """An uneven three-level tree (some parents with one child, groups of one row)."""
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(5):
        ea = rng.normal(0, 2.0)
        for b in range(int(rng.integers(1, 4))):
            eb = rng.normal(0, 1.0)
            for c in range(int(rng.integers(1, 4))):
                ec = rng.normal(0, 0.7)
                for _ in range(int(rng.integers(1, 6))):
                    x = float(rng.normal()) + 50.0
                    y = shift + 10 + 0.5 * x + ea + eb + ec + rng.normal(0, 1.0)
                    rows.append({"a": f"A{a}", "b": f"b{b}", "c": f"c{c}", "x": x, "y": y})
    return pl.DataFrame(rows)


def population(rows: pl.DataFrame, seed: int = 11) -> pl.DataFrame:
    """Every sampled (a, b, c) cell, plus unseen levels at every depth, random counts."""
    seen = rows.select("a", "b", "c").unique().sort("a", "b", "c")
    unseen = pl.DataFrame(
        {
            "a": ["A0", "A0", "A9", "A9", "A1"],
            "b": ["b0", "b7", "b0", "b1", "b0"],
            "c": ["c8", "c0", "c0", "c0", "c9"],
        }
    )
    pop = pl.concat([seen, unseen])
    rng = np.random.default_rng(seed)
    return pop.with_columns(pl.Series("n", rng.integers(10, 500, pop.height).astype(float)))


def compare(a: pl.DataFrame, b: pl.DataFrame, rtol: float = 1e-8) -> None:
    assert a.columns == b.columns
    for name in NUMBERS:
        x, y = a[name].to_numpy(), b[name].to_numpy()
        scale = float(np.abs(x).max())
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("by", [["a"], ["a", "b"], []])
def test_tree_and_blocked_agree(by: list[str]) -> None:
    rows = nested_rows()
    pop = population(rows)
    tree = fit_with(NESTED, rows, "auto")
    blocked = fit_with(NESTED, rows, "blocked")
    assert tree.nested and not blocked.nested
    compare(pooljob.poststratify(tree, pop, "n", by), pooljob.poststratify(blocked, pop, "n", by))


def _indicator(labels: list[tuple[Any, ...]], levels: list[tuple[Any, ...]]) -> np.ndarray:
    index = {lev: i for i, lev in enumerate(levels)}
    out = np.zeros((len(labels), len(levels)))
    for r, lab in enumerate(labels):
        if lab in index:
            out[r, index[lab]] = 1.0
    return out


def dense_reference(
    rows: pl.DataFrame,
    pop: pl.DataFrame,
    fit: FitResult,
    slopes: bool,
    by: list[str],
) -> pl.DataFrame:
    """Dense posterior at the fit's variance components; ``slopes``: ``x + (1 + x | a)``."""
    pred = fit.predictor
    assert pred is not None
    sigma2 = fit.sigma**2
    groupings = [tuple(b.grouping.columns) for b in pred.design.blocks]

    def design(frame: pl.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
        one = np.ones((frame.height, 1))
        x = np.column_stack([one, frame["x"].to_numpy()]) if slopes else one
        zs = []
        for d, cols in enumerate(groupings):
            levels = [tuple(r) for r in pred.levels[d].select(list(cols)).iter_rows()]
            ind = _indicator([tuple(r) for r in frame.select(list(cols)).iter_rows()], levels)
            if pred.covariance[d].shape[0] == 2:  # (1 + x | a): level-major, columns interleaved
                z = np.zeros((frame.height, 2 * len(levels)))
                z[:, 0::2] = ind
                z[:, 1::2] = ind * frame["x"].to_numpy()[:, None]
            else:
                z = ind
            zs.append(z)
        return x, zs

    x, zs = design(rows)
    z = np.hstack(zs)
    g = np.zeros((z.shape[1], z.shape[1]))
    pos = 0
    for d, zd in enumerate(zs):
        p = pred.covariance[d].shape[0]
        for lev in range(zd.shape[1] // p):
            g[pos + lev * p : pos + (lev + 1) * p, pos + lev * p : pos + (lev + 1) * p] = (
                pred.covariance[d]
            )
        pos += zd.shape[1]
    y = rows["y"].to_numpy()
    # Henderson's C = Var((β, b) − (β̂, b̂)) through V = Z G Z' + σ² I (G may be singular)
    vinv = np.linalg.inv(z @ g @ z.T + sigma2 * np.eye(len(y)))
    vb = np.linalg.inv(x.T @ vinv @ x)
    beta = vb @ x.T @ vinv @ y
    gz = g @ z.T
    coef = np.concatenate([beta, gz @ vinv @ (y - x @ beta)])
    proj = vinv - vinv @ x @ vb @ x.T @ vinv
    cross = -vb @ x.T @ vinv @ gz.T
    c = np.block([[vb, cross], [cross.T, g - gz @ proj @ gz.T]])
    px, pzs = design(pop)
    cells = np.hstack([px, *pzs])
    # unseen levels: each cell's prior variance from the effects it does not know
    keys = pop.select(by) if by else pl.DataFrame({"_": np.zeros(pop.height)})
    groups = keys.unique().sort(keys.columns)
    out = []
    n = pop["n"].to_numpy()
    for grp in groups.iter_rows():
        sel = np.array([tuple(r) == grp for r in keys.iter_rows()])
        w = n[sel] / n[sel].sum()
        a = cells[sel].T @ w
        prior = 0.0
        for d, cols in enumerate(groupings):
            levels = {tuple(r) for r in pred.levels[d].select(list(cols)).iter_rows()}
            labels = [tuple(r) for r in pop.filter(pl.Series(sel)).select(list(cols)).iter_rows()]
            new: dict[tuple[Any, ...], np.ndarray] = {}
            xs = pop.filter(pl.Series(sel))["x"] if slopes else w
            for lab, wc, xc in zip(labels, w, xs, strict=True):
                if lab in levels:
                    continue
                zc = np.array([1.0, float(xc)]) if pred.covariance[d].shape[0] == 2 else np.ones(1)
                new[lab] = new.get(lab, 0.0) + wc * zc
            prior += sum(float(v @ pred.covariance[d] @ v) for v in new.values())
        est = float(a @ coef)
        se = float(np.sqrt(a @ c @ a + prior))
        out.append((*grp, est, se))
    names = by if by else ["_"]
    return pl.DataFrame(out, schema=[*names, "estimate", "std_error"], orient="row")


@pytest.mark.parametrize("solver", ["auto", "blocked"])
def test_dense_henderson_nested(solver: str) -> None:
    rows = nested_rows()
    pop = population(rows)
    fit = fit_with(NESTED, rows, solver)
    got = pooljob.poststratify(fit, pop, "n", ["a"])
    want = dense_reference(rows, pop, fit, False, ["a"])
    np.testing.assert_allclose(got["estimate"], want["estimate"], rtol=1e-9)
    np.testing.assert_allclose(got["std_error"], want["std_error"], rtol=1e-8)
    z = norm.ppf(0.975)
    np.testing.assert_allclose(got["upper"] - got["estimate"], z * got["std_error"], rtol=1e-12)


def test_dense_henderson_slopes_centred() -> None:
    """Random slopes on a covariate far from 0 (fitted centred); population on its own scale."""
    rows = nested_rows()
    formula = "y ~ x + (1 + x | a) + (1 | a:b)"
    fit = fit_with(formula, rows, "auto")
    assert not fit.nested
    pop = (
        population(rows)
        .select("a", "b", "n")
        .unique(["a", "b"], keep="first")
        .join(pl.DataFrame({"x": [48.0, 50.0, 53.0]}), how="cross")
        .sort("a", "b", "x")
    )
    got = pooljob.poststratify(fit, pop, "n", ["a"])
    want = dense_reference(rows, pop, fit, True, ["a"])
    np.testing.assert_allclose(got["estimate"], want["estimate"], rtol=1e-8)
    np.testing.assert_allclose(got["std_error"], want["std_error"], rtol=1e-6)


@pytest.mark.parametrize("solver", ["auto", "blocked"])
def test_shift_invariance(solver: str) -> None:
    """Shifting y by a constant shifts the estimates by it; std_error does not move."""
    pop = population(nested_rows())
    base = pooljob.poststratify(fit_with(NESTED, nested_rows(), solver), pop, "n", ["a"])
    moved = pooljob.poststratify(
        fit_with(NESTED, nested_rows(shift=1000.0), solver), pop, "n", ["a"]
    )
    np.testing.assert_allclose(moved["estimate"] - 1000.0, base["estimate"], atol=1e-7)
    np.testing.assert_allclose(moved["std_error"], base["std_error"], rtol=1e-6)
    np.testing.assert_allclose(moved["lower"] - 1000.0, base["lower"], atol=1e-6)


@pytest.mark.parametrize("solver", ["auto", "blocked"])
def test_unseen_levels_get_their_prior(solver: str) -> None:
    """A state the sample never saw: μ̂, with Var(μ̂) + τ²_a + Σ w² (τ²_ab) + Σ w² τ²_abc."""
    rows = nested_rows()
    fit = fit_with(NESTED, rows, solver)
    pop = pl.DataFrame(
        {"a": ["A9", "A9", "A9"], "b": ["b0", "b0", "b1"], "c": ["c0", "c1", "c0"]}
    ).with_columns(pl.Series("n", [1.0, 1.0, 2.0]))
    got = pooljob.poststratify(fit, pop, "n")
    comp = {r["grouping"]: r["variance"] for r in fit.components.iter_rows(named=True)}
    se_mu = float(fit.coefficients["std_error"][0])
    w_ab, w_abc = 0.5**2 + 0.5**2, 0.25**2 + 0.25**2 + 0.5**2
    var = se_mu**2 + comp["a"] + w_ab * comp["a:b"] + w_abc * comp["a:b:c"]
    assert got["estimate"][0] == pytest.approx(float(fit.coefficients["estimate"][0]), rel=1e-12)
    assert got["std_error"][0] == pytest.approx(np.sqrt(var), rel=1e-10)


def test_simulation_intervals_cover_the_truth() -> None:
    """Mean income by state: the truth Σ N_c μ_c / Σ N_c of each state is covered."""
    rng = np.random.default_rng(2024)
    states, counties = 30, 6
    u_state = rng.normal(0, 3.0, states)
    u_county = rng.normal(0, 1.5, (states, counties))
    u_age = {"18-29": -4.0, "30-49": 2.0, "50+": 3.0}
    cells = [
        (f"S{s:02d}", f"C{c}", age, float(rng.integers(100, 5000)))
        for s in range(states)
        for c in range(counties)
        for age in u_age
    ]
    pop = pl.DataFrame(cells, schema=["state", "county", "age", "n"], orient="row")
    mu = np.array(
        [
            40.0 + u_state[int(s[1:])] + u_county[int(s[1:]), int(c[1:])] + u_age[age]
            for s, c, age, _ in cells
        ]
    )
    pop = pop.with_columns(pl.Series("mu", mu))
    # an unrepresentative sample: the young three times as likely, some counties never drawn
    p = pop["n"].to_numpy() * np.where(pop["age"] == "18-29", 3.0, 1.0)
    p = p * (rng.uniform(size=pop.height) > 0.1)
    draw = rng.choice(pop.height, size=6000, p=p / p.sum())
    sample = pop[draw].with_columns(
        (pl.col("mu") + pl.Series(rng.normal(0, 5.0, len(draw)))).alias("income")
    )
    fit = pooljob.fit("income ~ age + (1 | state) + (1 | state:county)", sample)
    got = pooljob.poststratify(fit, pop.drop("mu"), "n", ["state"])
    truth = pop.group_by("state").agg(
        ((pl.col("n") * pl.col("mu")).sum() / pl.col("n").sum()).alias("truth")
    )
    both = got.join(truth, on="state")
    covered = float(((both["lower"] <= both["truth"]) & (both["truth"] <= both["upper"])).mean())
    assert covered >= 0.8, covered
    z = (both["estimate"] - both["truth"]) / both["std_error"]
    assert float((z**2).mean()) < 2.0  # std_error is the right size
    raw = sample.group_by("state").agg(pl.col("income").mean().alias("raw")).join(truth, on="state")
    rmse_raw = float(np.sqrt(((raw["raw"] - raw["truth"]) ** 2).mean()))
    rmse = float(np.sqrt(((both["estimate"] - both["truth"]) ** 2).mean()))
    assert rmse < rmse_raw


def test_cli_job_end_to_end(tmp_path: Path) -> None:
    from pooljob.job.cli import main

    rows = nested_rows()
    rows.write_parquet(tmp_path / "rows.parquet")
    pop = population(rows)
    pop.write_parquet(tmp_path / "population.parquet")
    (tmp_path / "job.toml").write_text(
        '[source]\npath = "rows.parquet"\n'
        f'[model]\nformula = "{NESTED}"\n'
        '[output]\npath = "out"\n'
        '[poststratify]\npath = "population.parquet"\nweight = "n"\nby = ["a"]\n'
    )
    assert main(["--quiet", "run", str(tmp_path / "job.toml")]) == 0
    table = pl.read_parquet(tmp_path / "out" / "current" / "poststratified.parquet")
    assert table.columns == ["a", "estimate", "std_error", "lower", "upper", "population"]
    compare(table, pooljob.poststratify(fit_with(NESTED, rows, "auto"), pop, "n", ["a"]))
