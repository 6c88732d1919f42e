"""The fast criterion and its exact gradient (pooljob/model/profiled.py).

On small random designs — crossed intercepts, a slope in the dense part, a
slope in the block-diagonal grouping, a single grouping with correlated
slopes, uncorrelated slopes — and for REML and ML:

* ``profiled.objective`` equals the blocked reference ``lmm.objective`` to
  1e-11 relative;
* the gradient equals five-point central differences of ``lmm.objective``
  to 1e-6 (relative to the largest component);
* at a boundary (a random intercept's θ = 0) the gradient's entry is 0, and
  a singular template with slopes falls back to differences, which agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

import pooljob
import pooljob.model.general as general
from pooljob.model import lmm, profiled
from pooljob.model.blocks import Blocks


def _data(seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = 160
    g = rng.permutation(np.arange(n) % 12)
    h = rng.permutation(np.arange(n) % 6)
    k = rng.integers(0, 3, n)
    x = rng.normal(0, 1.5, n)
    eff = rng.multivariate_normal([0, 0], [[1.5, -0.3], [-0.3, 0.4]], 12)
    y = (
        1
        + x
        + eff[g, 0]
        + eff[g, 1] * x
        + rng.normal(0, 0.8, 6)[h]
        + rng.normal(0, 0.5, 3)[k]
        + rng.normal(0, 1, n)
    )
    return pl.DataFrame(
        {
            "g": [f"g{i}" for i in g],
            "h": [f"h{i}" for i in h],
            "k": [f"k{i}" for i in k],
            "x": x,
            "y": y,
        }
    )


FORMULAS = {
    "three_crossed": "y ~ x + (1 | g) + (1 | h) + (1 | k)",
    "slope_in_dense_part": "y ~ x + (1 | g) + (1 + x | h)",
    "slope_in_first_block": "y ~ x + (1 + x | g) + (1 | h)",
    "one_grouping_slope": "y ~ x + (1 + x | g)",
    "uncorrelated_slope": "y ~ x + (x || g) + (1 | k)",
}


def _blocks(formula: str, monkeypatch: pytest.MonkeyPatch) -> Blocks:
    captured: dict[str, Any] = {}
    original = general.fit_general

    def spy(prep: general.Prepared, reml: bool, *args: Any) -> general.GeneralFit:
        captured["blocks"] = prep.blocks
        return original(prep, reml, *args)

    monkeypatch.setattr(general, "fit_general", spy)
    pooljob.fit(formula, _data(7))
    blocks: Blocks = captured["blocks"]
    return blocks


def _theta(blocks: Blocks, rng: np.random.Generator) -> np.ndarray:
    out = []
    for entries in blocks.free:
        for i, j in entries:
            out.append(rng.uniform(0.3, 1.2) if i == j else rng.uniform(-0.4, 0.4))
    return np.array(out)


def _differences(blocks: Blocks, theta: np.ndarray, reml: bool) -> np.ndarray:
    g = np.empty(len(theta))
    for i in range(len(theta)):
        h = 1e-3 * max(1.0, abs(theta[i]))
        e = np.zeros(len(theta))
        e[i] = h

        def f(t: np.ndarray) -> float:
            return lmm.objective(blocks, t, reml)

        g[i] = (f(theta - 2 * e) - 8 * f(theta - e) + 8 * f(theta + e) - f(theta + 2 * e)) / (
            12 * h
        )
    return g


@pytest.mark.parametrize("reml", [True, False], ids=["reml", "ml"])
@pytest.mark.parametrize("design", sorted(FORMULAS))
def test_gradient_matches_differences(
    design: str, reml: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = _blocks(FORMULAS[design], monkeypatch)
    ws = profiled.workspace(blocks)
    assert ws is not None
    rng = np.random.default_rng(3)
    for _ in range(2):
        theta = _theta(blocks, rng)
        ref = lmm.objective(blocks, theta, reml)
        assert profiled.objective(blocks, ws, theta, reml) == pytest.approx(ref, rel=1e-11)
        f, g = profiled.objective_and_gradient(blocks, ws, theta, reml)
        assert f == pytest.approx(ref, rel=1e-11)
        fd = _differences(blocks, theta, reml)
        np.testing.assert_allclose(g, fd, rtol=0, atol=1e-6 * max(1.0, np.abs(fd).max()))


def test_gradient_at_the_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _blocks(FORMULAS["slope_in_dense_part"], monkeypatch)
    ws = profiled.workspace(blocks)
    assert ws is not None
    # θ = (g intercept, h: T11, T21, T22); an intercept at 0: its entry is exactly 0
    theta = np.array([0.0, 0.8, 0.2, 0.5])
    _, g = profiled.objective_and_gradient(blocks, ws, theta, True)
    assert g[0] == 0.0
    np.testing.assert_allclose(g[1:], _differences(blocks, theta, True)[1:], atol=1e-6 * 100)
    # a singular template with slopes (T22 = 0): differences, still the gradient
    theta = np.array([0.7, 0.8, 0.2, 0.0])
    _, g = profiled.objective_and_gradient(blocks, ws, theta, True)
    fd = _differences(blocks, theta, True)
    np.testing.assert_allclose(g, fd, atol=1e-5 * max(1.0, np.abs(fd).max()))


def test_fallback_without_pair_products_finds_the_same_optimum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the derivative-free path (COBYQA + polish) when the pair products would be too large
    data = _data(11)
    formula = FORMULAS["three_crossed"]
    fast = pooljob.fit(formula, data)
    monkeypatch.setattr(profiled, "MAX_PAIR_BYTES", 0)
    slow = pooljob.fit(formula, data)
    assert "COBYQA" in slow.optimizer["optimizer"]
    assert "exact gradient" in fast.optimizer["optimizer"]
    assert fast.converged and slow.converged
    assert fast.objective <= slow.objective + 1e-9 * abs(slow.objective)
    assert fast.objective == pytest.approx(slow.objective, rel=1e-9)
