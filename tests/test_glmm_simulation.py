"""Binomial and Poisson fits recover known parameters; and answers do not depend
on row order or on how the rows are split into files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import pooljob


def simulate(family: str, seed: int, groups: int = 60, per: int = 150) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per)
    h = rng.integers(0, 8, len(g))
    x = rng.integers(0, 2, len(g))
    eta = -0.4 + 0.6 * x + rng.normal(0, 0.5, groups)[g] + rng.normal(0, 0.3, 8)[h]
    if family == "binomial":
        y = rng.random(len(g)) < 1 / (1 + np.exp(-eta))
        exposure = np.ones(len(g))
    else:
        exposure = rng.uniform(0.5, 2.0, len(g))
        y = rng.poisson(exposure * np.exp(eta))
    return pl.DataFrame(
        {
            "g": [f"g{i:03d}" for i in g],
            "h": [f"h{i}" for i in h],
            "x": [("no", "yes")[i] for i in x],
            "y": y.astype(np.int64),
            "exposure": exposure,
        }
    )


FORMULA = {
    "binomial": "y ~ x + (1 | g) + (1 | h)",
    "poisson": "y ~ x + offset(log(exposure)) + (1 | g) + (1 | h)",
}


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_recovers_parameters(family: str) -> None:
    sd_g, sd_h, slope = [], [], []
    for seed in range(6):
        r = pooljob.fit(FORMULA[family], simulate(family, seed), family=family)  # type: ignore[arg-type]
        comp = dict(zip(r.components["grouping"], r.components["sd"], strict=True))
        sd_g.append(comp["g"])
        sd_h.append(comp["h"])
        slope.append(float(r.coefficients.filter(pl.col("term") == "xyes")["estimate"][0]))
        assert r.converged
    assert np.mean(sd_g) == pytest.approx(0.5, abs=0.06)
    assert np.mean(slope) == pytest.approx(0.6, abs=0.05)
    assert 0.05 < np.mean(sd_h) < 0.6  # 8 levels: a rough estimate


def test_row_order_and_files_do_not_matter(tmp_path: Path) -> None:
    data = simulate("poisson", 42, groups=30, per=60)
    one = pooljob.fit(FORMULA["poisson"], data, family="poisson")
    shuffled = data.sample(fraction=1.0, shuffle=True, seed=1)
    for i, part in enumerate(np.array_split(np.arange(shuffled.height), 4)):
        shuffled[part].write_parquet(tmp_path / f"part{i}.parquet")
    split = pooljob.fit(FORMULA["poisson"], str(tmp_path / "*.parquet"), family="poisson")
    assert split.loglik == pytest.approx(one.loglik, rel=1e-12)
    for name, col in (("coefficients", "estimate"), ("components", "variance")):
        a, b = getattr(one, name)[col].to_numpy(), getattr(split, name)[col].to_numpy()
        assert np.allclose(a, b, rtol=1e-7, atol=1e-9)
    ea = one.estimates.sort("grouping", "g", "h")["estimate"].to_numpy()
    eb = split.estimates.sort("grouping", "g", "h")["estimate"].to_numpy()
    assert np.allclose(ea, eb, rtol=1e-7)


def hard_case(trial: int) -> tuple[str, pl.DataFrame]:
    """Small crossed designs near the boundary: a zero or tiny variance, rare events."""
    rng = np.random.default_rng(trial)
    family = ("binomial", "poisson")[trial % 2]
    n = int(rng.integers(200, 3000))
    qg, qh = int(rng.integers(3, 40)), int(rng.integers(2, 6))
    gi, hi = rng.integers(0, qg, n), rng.integers(0, qh, n)
    sd_g = (0.0, 0.3, 1.5)[trial % 3]
    base = (-4.0, -1.0, 0.5)[(trial // 3) % 3]
    eta = base + rng.normal(0, sd_g + 1e-9, qg)[gi] + rng.normal(0, 0.2, qh)[hi]
    if family == "binomial":
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.int64)
    else:
        y = rng.poisson(np.exp(eta))
    frame = pl.DataFrame(
        {
            "g": [f"g{i}" for i in gi],
            "h": [f"h{i}" for i in hi],
            "x": rng.integers(0, 2, n).astype(str),
            "y": y,
        }
    )
    return family, frame


@pytest.mark.parametrize("trial", range(12))
def test_gradient_search_agrees_with_derivative_free(
    trial: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exact-gradient search and glmer-style COBYQA reach the same optimum,
    on the boundary (a variance of 0) as well as inside."""
    import pooljob.model.glmm_fit as glmm_fit

    family, frame = hard_case(trial)
    formula = "y ~ x + (1 | g) + (1 | h)"
    with_gradient = pooljob.fit(formula, frame, family=family)  # type: ignore[arg-type]
    monkeypatch.setattr(glmm_fit, "_gradient_function", lambda *args: None)
    without = pooljob.fit(formula, frame, family=family)  # type: ignore[arg-type]
    assert with_gradient.loglik == pytest.approx(without.loglik, rel=1e-9)
    assert with_gradient.singular == without.singular
    a = with_gradient.components["sd"].to_numpy()
    b = without.components["sd"].to_numpy()
    assert np.allclose(a, b, rtol=1e-3, atol=1e-3)
