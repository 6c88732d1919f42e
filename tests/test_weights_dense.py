"""A dense reference for observation weights: V = σ² W⁻¹ + Z G Zᵀ built with numpy.

With no use of pooljob's code, on small data: the ML and REML criteria

    −2 log L   = N log 2π + log|V| + rᵀV⁻¹r,                 r = y − Xβ̂ (GLS)
    −2 log L_R = (N − p) log 2π + log|V| + log|XᵀV⁻¹X| + rᵀV⁻¹r

at pooljob's estimates equal its published objective; moving any variance
parameter away makes them worse (an optimum); β̂ = (XᵀV⁻¹X)⁻¹XᵀV⁻¹y, the
conditional modes b̂ = G Zᵀ V⁻¹ r, and the estimates (weighted row averages
Σ w (x β̂ + z b̂) / Σ w) with their std_error from Henderson's weighted equations
C = σ² [[XᵀWX, XᵀWZ], [ZᵀWX, ZᵀWZ + σ²G⁻¹]]⁻¹ (in the scale of u = Λ⁻¹b, so a
singular G is allowed) equal the published ones — on the tree solver and on the
blocked solver.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

from pooljob.model.formula import parse_formula
from pooljob.model.options import DEFAULT_CONTROL
from pooljob.pipeline import fit_source
from pooljob.scan.source import open_data
from tests.conftest import DATA


def _codes(values: pl.Series) -> tuple[np.ndarray, list[Any]]:
    levels = sorted(values.unique().to_list())
    index = {v: i for i, v in enumerate(levels)}
    return np.array([index[v] for v in values.to_list()]), levels


def _indicators(codes: np.ndarray) -> np.ndarray:
    z = np.zeros((len(codes), int(codes.max()) + 1))
    z[np.arange(len(codes)), codes] = 1.0
    return z


def _identity(m: int):  # type: ignore[no-untyped-def]
    """G of m independent intercepts: v[0] I."""
    return lambda v: v[0] * np.eye(m)


def _criterion(y, x, z, g, w, sigma2, reml):  # type: ignore[no-untyped-def]
    n, p = x.shape
    v = sigma2 * np.diag(1.0 / w) + z @ g @ z.T
    vinv = np.linalg.inv(v)
    xtvx = x.T @ vinv @ x
    beta = np.linalg.solve(xtvx, x.T @ vinv @ y)
    r = y - x @ beta
    out = np.linalg.slogdet(v)[1] + r @ vinv @ r
    if reml:
        return float(out + (n - p) * np.log(2 * np.pi) + np.linalg.slogdet(xtvx)[1]), beta, vinv
    return float(out + n * np.log(2 * np.pi)), beta, vinv


def _fit(formula: str, rows: pl.DataFrame, method: str, solver: str) -> Any:
    with open_data(rows) as source:
        return fit_source(
            parse_formula(formula),
            source,
            "gaussian",
            method,
            0.95,
            solver=solver,
            control=DEFAULT_CONTROL,
            weights="w",
        )


def _variance(fit: Any, grouping: str, term1: str = "(Intercept)", term2: str | None = None):  # type: ignore[no-untyped-def]
    comp = fit.components.filter(
        (pl.col("grouping") == grouping)
        & (pl.col("term1") == term1)
        & (pl.col("term2").is_null() if term2 is None else pl.col("term2") == term2)
    )
    return float(comp["variance"][0])


def _check(fit, rows, x, blocks, reml):  # type: ignore[no-untyped-def]
    """blocks: (z, variances per column of z as a function of the fit's parameters)."""
    y = rows["y"].to_numpy().astype(float)
    w = rows["w"].to_numpy().astype(float)
    z = np.hstack([b[0] for b in blocks])
    params = [p for b in blocks for p in b[1]]

    def g_of(values):  # type: ignore[no-untyped-def]
        mats, k = [], 0
        for b in blocks:
            m = len(b[1])
            mats.append(b[2](values[k : k + m]))
            k += m
        size = sum(m.shape[0] for m in mats)
        out, at = np.zeros((size, size)), 0
        for m in mats:
            out[at : at + m.shape[0], at : at + m.shape[0]] = m
            at += m.shape[0]
        return out

    values = np.array(params)
    sigma2 = fit.sigma**2
    f, beta, vinv = _criterion(y, x, z, g_of(values), w, sigma2, reml)
    assert abs(f - fit.objective) < 1e-9 * abs(f)
    # an optimum: every parameter moved by ±0.1% makes the criterion worse
    for k in range(len(values) + 1):
        for step in (1.001, 0.999):
            moved, s2 = values.copy(), sigma2
            if k < len(values):
                moved[k] = values[k] * step if values[k] != 0 else 1e-6 * sigma2
            else:
                s2 = sigma2 * step
            assert _criterion(y, x, z, g_of(moved), w, s2, reml)[0] > f - 1e-9 * abs(f)
    np.testing.assert_allclose(fit.coefficients["estimate"].to_numpy(), beta, rtol=1e-7)
    g = g_of(values)
    b = g @ z.T @ vinv @ (y - x @ beta)
    # Henderson with weights, in the scale u = Λ⁻¹b (G = σ² ΛΛᵀ, which needs no G⁻¹ and
    # holds for a singular G too): C = σ² T [[XᵀWX, XᵀWZΛ], [ΛᵀZᵀWX, ΛᵀZᵀWZΛ + I]]⁻¹ Tᵀ
    p, q = x.shape[1], z.shape[1]
    vals, vecs = np.linalg.eigh(g / sigma2)
    lam = vecs @ np.diag(np.sqrt(np.maximum(vals, 0.0))) @ vecs.T
    a = np.hstack([x, z @ lam])
    m = a.T @ (w[:, None] * a)
    m[p:, p:] += np.eye(q)
    t = np.eye(p + q)
    t[p:, p:] = lam
    cinv = sigma2 * t @ np.linalg.inv(m) @ t.T
    return b, cinv, beta, p


def test_nested_tree_and_blocked_against_dense() -> None:
    rows = pl.read_csv(DATA / "weights_nested.csv").filter(pl.col("a").is_in(["a1", "a2"]))
    formula = "y ~ 1 + (1 | a/b/c)"
    ca, la = _codes(rows["a"])
    cb, lb = _codes(rows["b"])
    cc, lc = _codes(rows["c"])
    x = np.ones((rows.height, 1))
    for method in ("reml", "ml"):
        fits = [_fit(formula, rows, method, s) for s in ("auto", "blocked")]
        assert fits[0].nested and not fits[1].nested
        # one meaning whichever solver: the two publish the same tables
        for table in ("estimates", "effects", "coefficients", "components"):
            a, b = getattr(fits[0], table), getattr(fits[1], table)
            order = [c for c in ("grouping", "a", "b", "c", "term", "term1") if c in a.columns]
            a, b = a.sort(order, nulls_last=True), b.sort(order, nulls_last=True)
            for col in (
                "n",
                "raw_mean",
                "estimate",
                "parent",
                "std_error",
                "shrinkage",
                "cond_sd",
                "variance",
            ):
                if col in a.columns:
                    np.testing.assert_allclose(b[col], a[col], rtol=1e-6, err_msg=f"{table}.{col}")
        for fit in fits:
            blocks = [
                (
                    _indicators(cc),
                    [_variance(fit, "c:(b:a)")],
                    _identity(len(lc)),
                ),
                (_indicators(cb), [_variance(fit, "b:a")], _identity(len(lb))),
                (_indicators(ca), [_variance(fit, "a")], _identity(len(la))),
            ]
            b, cinv, beta, _ = _check(fit, rows, x, blocks, method == "reml")
            eff = fit.effects.filter(pl.col("grouping") == "c:(b:a)")
            by_level = dict(zip(eff["c"].to_list(), eff["estimate"].to_list(), strict=True))
            np.testing.assert_allclose(
                [by_level[v] for v in lc], b[: len(lc)], rtol=1e-6, atol=1e-9
            )
            # the estimate of group `a` and its std_error: weighted row average of [x, z]
            w = rows["w"].to_numpy()
            z = np.hstack([blk[0] for blk in blocks])
            a_rows = np.hstack([x, z])
            est = fit.estimates.filter(pl.col("grouping") == "a").sort("a")
            for i, level in enumerate(la):
                sel = ca == i
                avg = (w[sel, None] * a_rows[sel]).sum(axis=0) / w[sel].sum()
                want = avg @ np.concatenate([beta, b])
                assert abs(est["estimate"][i] - want) < 1e-7 * abs(want), level
                se = float(np.sqrt(avg @ cinv @ avg))
                assert abs(est["std_error"][i] - se) < 1e-6 * se, level


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_slope_blocked_against_dense(method: str) -> None:
    rows = pl.read_csv(DATA / "weights_slope.csv").filter(
        pl.col("g").is_in([f"s{i:02d}" for i in range(1, 11)])
    )
    cg, lg = _codes(rows["g"])
    ch, lh = _codes(rows["h"])
    xs = rows["x"].to_numpy()
    x = np.column_stack([np.ones(rows.height), xs])
    fit = _fit("y ~ x + (x | g) + (1 | h)", rows, method, "auto")
    zg = _indicators(cg)
    # columns of g's block: intercept and slope per level, level-major as lme4
    z_slope = np.hstack([np.column_stack([zg[:, j], zg[:, j] * xs]) for j in range(len(lg))])

    def g_block(v):  # type: ignore[no-untyped-def]
        s = np.array([[v[0], v[2]], [v[2], v[1]]])
        return np.kron(np.eye(len(lg)), s)

    blocks = [
        (
            z_slope,
            [
                _variance(fit, "g"),
                _variance(fit, "g", "x"),
                _variance(fit, "g", "(Intercept)", "x"),
            ],
            g_block,
        ),
        (_indicators(ch), [_variance(fit, "h")], _identity(len(lh))),
    ]
    b, _, _, _ = _check(fit, rows, x, blocks, method == "reml")
    eff = fit.effects.filter(pl.col("grouping") == "g")
    for j, level in enumerate(lg):
        for t, term in enumerate(("(Intercept)", "x")):
            got = eff.filter((pl.col("g") == level) & (pl.col("term") == term))["estimate"][0]
            assert abs(got - b[2 * j + t]) < 1e-6 * max(1.0, abs(b[2 * j + t])), (level, term)
