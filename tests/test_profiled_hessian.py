"""The profiled solver's analytic Hessian and its group-mean prediction variances.

* :func:`pooljob.model.profiled_hessian.hessian` equals central differences
  of the exact gradient: to the differences' rounding where every trace is
  summed exactly (few columns), to the Hutchinson estimate's error where
  a grouping has more levels than ``PROBES``; REML and ML, with and
  without covariates, away from and at the optimum.
* Newton's steps with it reach the same optimum as with the Hessian from
  criterion values and secant updates, in fewer evaluations.
* The prediction variances of the group means read off each level's own
  block of ``Ω⁻¹`` (:func:`pooljob.model.lmm.mean_prediction_variance`)
  equal the general computation (``aᵀ Ω⁻¹ a`` with the whole loading),
  also with a random slope, precision weights, and a variance estimated at
  0 (where the identity is ill conditioned and the general one is used).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.model import general, profiled, profiled_hessian
from pooljob.model import profiled_solve as ps
from pooljob.model.blocks import Blocks
from tests.test_crossed_exact import FORMULA, _data, _singular, _slopes

CASES = [
    (FORMULA, (3, 150, (12, 9, 4)), None),
    ("y ~ x + (1 | a) + (1 | b)", (4, 150, (12, 9, 4)), None),
    ("y ~ 1 + (1 | a) + (1 | b) + (1 | c)", (5, 3000, (150, 100, 8)), None),
    ("y ~ x + (1 | a)", (9, 150, (12, 9, 4)), None),
]


def _blocks(
    formula: str,
    data: pl.DataFrame,
    method: str,
    monkeypatch: pytest.MonkeyPatch,
    weights: str | None = None,
) -> tuple[Blocks, profiled.Workspace, np.ndarray]:
    seen: list[tuple[Blocks, profiled.Workspace]] = []
    real = general.workspace

    def spy(blocks: Blocks) -> profiled.Workspace | None:
        ws = real(blocks)
        assert ws is not None
        seen.append((blocks, ws))
        return ws

    monkeypatch.setattr(general, "workspace", spy)
    fit = pooljob.fit(formula, data, method=method, weights=weights)
    return seen[0][0], seen[0][1], np.array(fit.optimizer["final"])


@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize(
    ("formula", "shape", "weights"), [*CASES, (FORMULA, (8, 150, (12, 9, 4)), "w")]
)
def test_hessian_equals_differences_of_the_gradient(
    monkeypatch: pytest.MonkeyPatch, formula: str, shape: tuple, weights: str | None, method: str
) -> None:
    seed, rows, levels = shape
    data = _data(seed, rows, levels)
    if weights:
        rng = np.random.default_rng(seed)
        data = data.with_columns(w=pl.Series(rng.uniform(0.2, 3.0, data.height)))
    blocks, ws, optimum = _blocks(formula, data, method, monkeypatch, weights)
    reml = method == "reml"
    # a grouping with more levels than PROBES: its traces are estimated
    estimated = any(q > profiled_hessian.PROBES for q in blocks.levels[1:])
    for theta in (optimum, 1.3 * optimum + 0.05):
        hess = profiled_hessian.hessian(blocks, ws, theta, reml)
        assert hess is not None
        n = len(theta)
        diff = np.zeros((n, n))
        for i in range(n):
            e = np.zeros(n)
            e[i] = 1e-5 * theta[i]
            up = profiled.objective_and_gradient(blocks, ws, theta + e, reml)[1]
            down = profiled.objective_and_gradient(blocks, ws, theta - e, reml)[1]
            diff[:, i] = (up - down) / (2 * e[i])
        diff = 0.5 * (diff + diff.T)
        err = np.max(np.abs(hess - diff)) / np.max(np.abs(diff))
        assert err < (2e-3 if estimated else 1e-7), (theta, hess, diff)


def test_hessian_does_not_apply_to_slopes_or_the_boundary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocks, ws, theta = _blocks("y ~ x + (1 + x | a) + (1 | b)", _slopes(3), "reml", monkeypatch)
    assert not profiled_hessian.applies(blocks)
    assert profiled_hessian.hessian(blocks, ws, theta, True) is None
    blocks, ws, theta = _blocks(FORMULA, _data(3), "reml", monkeypatch)
    theta = theta.copy()
    theta[1] = 0.0
    assert profiled_hessian.hessian(blocks, ws, theta, True) is None


def test_newton_with_the_hessian_reaches_the_same_optimum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _data(6, rows=3000, levels=(150, 100, 8))
    fast = pooljob.fit("y ~ x + (1 | a) + (1 | b) + (1 | c)", data)
    monkeypatch.setattr(profiled_hessian, "hessian", lambda *args: None)
    slow = pooljob.fit("y ~ x + (1 | a) + (1 | b) + (1 | c)", data)
    assert fast.converged and slow.converged
    assert fast.objective <= slow.objective + 1e-11 * abs(slow.objective)
    assert fast.objective == pytest.approx(slow.objective, rel=1e-12)
    np.testing.assert_allclose(fast.optimizer["final"], slow.optimizer["final"], rtol=1e-7)
    assert fast.optimizer["evaluations"] < slow.optimizer["evaluations"]


def _weighted(seed: int) -> pl.DataFrame:
    df = _data(seed)
    rng = np.random.default_rng(seed)
    return df.with_columns(w=pl.Series(rng.uniform(0.2, 3.0, df.height)))


@pytest.mark.parametrize(
    ("formula", "data", "weights"),
    [
        (FORMULA, _data(3), None),
        ("y ~ x + (1 + x | a) + (1 | b)", _slopes(3), None),
        (FORMULA, _weighted(8), "w"),
        (FORMULA, _singular(7), None),
        ("y ~ 1 + (1 | a) + (1 | b) + (1 | c)", _data(5, 3000, (150, 100, 8)), None),
    ],
)
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_group_mean_variances_equal_the_general_ones(
    monkeypatch: pytest.MonkeyPatch,
    formula: str,
    data: pl.DataFrame,
    weights: str | None,
    method: str,
) -> None:
    used: list[int] = []
    real = ps.mean_prediction_variance

    def count(*args: object) -> tuple[np.ndarray, np.ndarray]:
        value, ok = real(*args)  # type: ignore[arg-type]
        used.append(int(ok.sum()))
        return value, ok

    monkeypatch.setattr(ps, "mean_prediction_variance", count)
    fast = pooljob.fit(formula, data, method=method, weights=weights)
    assert sum(used) > 0

    def refuse(*args: object) -> tuple[np.ndarray, np.ndarray]:
        value, ok = real(*args)  # type: ignore[arg-type]
        return value, np.zeros_like(ok)

    monkeypatch.setattr(ps, "mean_prediction_variance", refuse)
    slow = pooljob.fit(formula, data, method=method, weights=weights)
    np.testing.assert_allclose(
        fast.estimates["std_error"].to_numpy(), slow.estimates["std_error"].to_numpy(), rtol=1e-10
    )


def test_criterion_is_smooth_near_a_variance_of_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Schur complement is summed before it is subtracted from Ā (an uncentred Σy²).

    Subtracting the pairs' products one by one from Ā's large entries made
    the criterion jump by 1e-9 relative between θ = 0 and θ = 1e-6, where
    it changes by 1e-14.
    """
    from tests.test_crossed_iterative import crossed_data

    formula = "y ~ 1 + (1 | u) + (1 | i) + (1 | u:i)"
    blocks, ws, theta = _blocks(
        formula, crossed_data(n=3000, users=60, items=30), "reml", monkeypatch
    )
    values = []
    for t0 in (0.0, 1e-7, 1e-6, 3e-6, 1e-5):
        at = theta.copy()
        at[0] = t0
        values.append(profiled.objective(blocks, ws, at, True))
    assert np.ptp(values) < 2e-10 * abs(values[0])
