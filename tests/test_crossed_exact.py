"""The exact crossed solver's fast path against a brute-force dense reference.

A small crossed design with three random intercepts and a covariate
(``y ~ x + (1 | a) + (1 | b) + (1 | c)``) is fitted by pooljob's profiled
solver (moment-estimate start, Newton steps with the exact gradient and a
secant Hessian; estimates and variances read off the final factor,
:mod:`pooljob.model.profiled_solve`).  Checks:

* its REML and ML criteria are never above the minimum of the dense
  criterion (tests/dense_general.py: ``Λ'Z'ZΛ + I`` built and factorised as
  a whole, minimised derivative-free from several starts), and equal it to
  1e-8 relative;
* the previous optimizer (lme4's start, L-BFGS-B) reaches the same point;
* the prediction variances of the estimates are the same whether ``rᵀΣr``
  is gathered from Σ or computed by a triangular solve;
* the moment start is close to the optimum on a larger design.
"""

from __future__ import annotations

import functools

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.model import general, moment_start, profiled, profiled_solve
from pooljob.model.blocks import Blocks
from tests import dense_general as dg
from tests.dense_general import Model, RandomTerm

pytest.importorskip("scipy")

FORMULA = "y ~ x + (1 | a) + (1 | b) + (1 | c)"
MODEL = Model(
    "y",
    ("x",),
    (
        RandomTerm("a", ("a",), ("(Intercept)",)),
        RandomTerm("b", ("b",), ("(Intercept)",)),
        RandomTerm("c", ("c",), ("(Intercept)",)),
    ),
)


def _data(seed: int, rows: int = 150, levels: tuple[int, int, int] = (12, 9, 4)) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    codes = [rng.permutation(np.arange(rows) % q) for q in levels]
    x = rng.normal(0, 1, rows)
    y = 2 + 0.5 * x + rng.normal(0, 0.3, rows)
    for code, q, sd in zip(codes, levels, (1.0, 0.7, 0.4), strict=True):
        y = y + rng.normal(0, sd, q)[code]
    return pl.DataFrame(
        {
            "a": [f"a{v}" for v in codes[0]],
            "b": [f"b{v}" for v in codes[1]],
            "c": [f"c{v}" for v in codes[2]],
            "x": x,
            "y": y,
        }
    )


@functools.cache
def _dense(seed: int, method: str) -> float:
    """The dense criterion's minimum: L-BFGS-B by differences from θ = 1, then Nelder-Mead."""
    from scipy.optimize import minimize

    design = dg.build(_data(seed), MODEL)

    def f(theta: np.ndarray) -> float:
        return dg.criterion(design, np.abs(theta), method == "reml")

    x = minimize(f, np.ones(3), method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-9}).x
    fine = {"xatol": 1e-10, "fatol": 1e-13, "maxfev": 4000}
    return float(minimize(f, x, method="Nelder-Mead", options=fine).fun)


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_fast_path_reaches_the_dense_minimum(method: str) -> None:
    fit = pooljob.fit(FORMULA, _data(3), method=method)
    assert "moment estimates" in fit.optimizer["optimizer"]
    assert fit.converged
    dense = _dense(3, method)
    assert fit.objective <= dense + 1e-9 * abs(dense)
    assert fit.objective == pytest.approx(dense, rel=1e-8)


def test_previous_optimizer_reaches_the_same_point(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = pooljob.fit(FORMULA, _data(4))
    monkeypatch.setattr("pooljob.model.general.moment_start", lambda blocks: None)
    slow = pooljob.fit(FORMULA, _data(4))
    assert "L-BFGS-B" in slow.optimizer["optimizer"]
    assert fast.objective <= slow.objective + 1e-10 * abs(slow.objective)
    assert fast.objective == pytest.approx(slow.objective, rel=1e-11)
    a, b = fast.estimates, slow.estimates
    np.testing.assert_allclose(a["estimate"], b["estimate"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a["std_error"], b["std_error"], rtol=1e-5)
    np.testing.assert_allclose(fast.effects["cond_sd"], slow.effects["cond_sd"], rtol=1e-5)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_gathered_and_solved_prediction_variances_agree(
    monkeypatch: pytest.MonkeyPatch, share: float
) -> None:
    base = pooljob.fit(FORMULA, _data(5))
    monkeypatch.setattr(profiled_solve, "DENSE_SHARE", share)
    other = pooljob.fit(FORMULA, _data(5))
    np.testing.assert_allclose(other.estimates["std_error"], base.estimates["std_error"], rtol=1e-9)


def test_moment_start_is_near_the_optimum(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = moment_start.moment_start

    def spy(blocks: object) -> object:
        out = real(blocks)  # type: ignore[arg-type]
        seen.append(out)
        return out

    monkeypatch.setattr("pooljob.model.general.moment_start", spy)
    fit = pooljob.fit(FORMULA, _data(6, rows=3000, levels=(150, 100, 8)))
    theta = np.array(fit.optimizer["final"])
    assert seen[0] is not None
    np.testing.assert_allclose(seen[0][:2], theta[:2], rtol=0.15)


def _slopes(seed: int) -> pl.DataFrame:
    df = _data(seed)
    rng = np.random.default_rng(seed + 100)
    slope = rng.normal(0, 0.5, 12)
    a = df["a"].str.slice(1).cast(pl.Int64).to_numpy()
    y = df["y"].to_numpy() + slope[a] * df["x"].to_numpy()
    return df.with_columns(y=pl.Series(y))


def _singular(seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    df = _data(seed)
    # b carries no effect of its own: its variance is estimated at (or near) 0
    y = 2 + rng.normal(0, 1, df.height) + 0.5 * df["x"].to_numpy()
    return df.with_columns(y=pl.Series(y))


@pytest.mark.parametrize(
    ("formula", "make"),
    [
        (FORMULA, _data),
        ("y ~ x + (1 + x | a) + (1 | b)", _slopes),
        ("y ~ x + (1 | a) + (1 | b) + (1 | c)", _singular),
    ],
)
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_factor_reuse_equals_a_fresh_solve(
    monkeypatch: pytest.MonkeyPatch, formula: str, make: object, method: str
) -> None:
    """Estimates read off the optimizer's factor equal lmm.solve's fresh blocked factorisation."""
    data = make(7)  # type: ignore[operator]
    fast = pooljob.fit(formula, data, method=method)

    def refuse(*args: object) -> None:
        raise np.linalg.LinAlgError("use lmm.solve")

    monkeypatch.setattr("pooljob.model.general.solve_profiled", refuse)
    fresh = pooljob.fit(formula, data, method=method)
    assert fast.objective == pytest.approx(fresh.objective, rel=1e-12)  # the scan's cell order
    for name, cols in [
        ("estimates", ["estimate", "std_error"]),
        ("effects", ["estimate", "cond_sd"]),
        ("coefficients", ["estimate", "std_error"]),
        ("components", ["sd"]),
    ]:
        a, b = getattr(fast, name), getattr(fresh, name)
        for col in cols:
            x, y = a[col].to_numpy(), b[col].to_numpy()
            scale = max(1.0, float(np.nanmax(np.abs(y))))
            np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-9 * scale, err_msg=f"{name}.{col}")


def test_pairs_are_complete_and_in_column_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pair ``i ≥ j`` of one level's columns once, with its products, column by column."""
    seen: list[profiled.Workspace] = []
    real = general.workspace

    def spy(blocks: Blocks) -> profiled.Workspace | None:
        ws = real(blocks)
        assert ws is not None
        seen.append(ws)
        return ws

    monkeypatch.setattr(general, "workspace", spy)
    pooljob.fit("y ~ x + (1 + x | a) + (1 | b)", _slopes(3))
    ws = seen[0]
    p0 = ws.prod.shape[1]
    g = ws.g_bar.tocsr()
    want = {}
    for level in range(g.shape[0] // p0):
        rows = g[level * p0 : (level + 1) * p0]
        cols = np.unique(rows.indices)
        dense = rows.toarray()
        for a, i in enumerate(cols):
            for j in cols[: a + 1]:
                want[(int(j) * ws.size + int(i), level)] = np.outer(dense[:, i], dense[:, j])
    assert len(ws.flat) == len(want)
    assert np.all(np.diff(ws.flat // ws.size) >= 0)
    for t in range(len(ws.flat)):
        f = int(ws.flat[t])
        np.testing.assert_array_equal(ws.prod[t], want[(f, int(ws.level[t]))])
    # the pairs i = j, and only those, are listed in ``first``
    diagonal = np.flatnonzero(ws.flat % ws.size == ws.flat // ws.size)
    np.testing.assert_array_equal(ws.first, diagonal)


def test_blas_threads_are_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    from pooljob.model import blas

    libs = blas._libraries()
    before = [int(getattr(lib, get)()) for lib, _, get in libs]
    monkeypatch.setenv("POOLJOB_BLAS_THREADS", "2")
    assert blas.wanted() == min(2, __import__("os").cpu_count() or 1)
    with blas.threads(blas.LARGE):
        pass
    assert [int(getattr(lib, get)()) for lib, _, get in libs] == before
    monkeypatch.setenv("POOLJOB_BLAS_THREADS", "x")
    assert blas.wanted() == 1


def test_blas_threads_count_others_load_not_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second BLAS thread while the others leave a core free, this process's own load aside."""
    import os

    from pooljob.model import blas

    monkeypatch.delenv("POOLJOB_BLAS_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    # this process alone has kept one core busy for a minute: the load is its own
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    monkeypatch.setattr(blas, "_own_load", lambda: 1.0)
    assert blas.wanted() == 2
    # another process keeps a core busy
    monkeypatch.setattr(blas, "_own_load", lambda: 0.0)
    assert blas.wanted() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (2.2, 2.0, 2.0))
    monkeypatch.setattr(blas, "_own_load", lambda: 1.0)
    assert blas.wanted() == 1
