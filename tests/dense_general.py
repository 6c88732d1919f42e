"""A slow, obviously correct reference for general Gaussian mixed models.

Only for tests, numpy only (scipy for the optimizer), no use of pooljob's code.
Everything is dense and explicit, following lme4's definitions (Bates et al.
2015, *Fitting linear mixed-effects models using lme4*, JSS):

* ``X``: fixed-effects design with R's treatment contrasts (the first level in
  sorted order is the reference; without an intercept the first categorical
  term gets one column per level); term names as lme4 prints them.
* ``Z``: per random term, for each level (sorted labels) and each of the
  term's columns, the column value on that level's rows (lme4's layout:
  level-major, the term's columns interleaved).
* ``Λ_θ = ⊕_terms I_q ⊗ T_θ`` with ``T_θ`` lower triangular, filled column by
  column from θ (lme4's order); an uncorrelated ``(x || g)`` is two terms.
* With ``V₁ = ZΛΛ'Z' + I`` (so ``V = σ²V₁``), ``β̂ = (X'V₁⁻¹X)⁻¹X'V₁⁻¹(y − o)``
  and ``r² = (y − o − Xβ̂)'V₁⁻¹(y − o − Xβ̂)``:

  - REML: ``log|V₁| + log|X'V₁⁻¹X| + (n − p)(1 + log(2π r²/(n − p)))``
  - ML: ``log|V₁| + n(1 + log(2π r²/n))``

  (``log|V₁| = log|Λ'Z'ZΛ + I|``, so these are lme4's ``REMLcrit`` and
  ``deviance``.)
* ``σ̂² = r²/(n − p)`` (REML) or ``r²/n`` (ML); ``vcov(β̂) = σ̂²(X'V₁⁻¹X)⁻¹``;
  ``b̂ = ΛΛ'Z'V₁⁻¹(y − o − Xβ̂)``; lme4's ``condVar`` is
  ``Var(b | y, β) = σ̂²(ΛΛ' − ΛΛ'Z'V₁⁻¹ZΛΛ')``; ``fitted = o + Xβ̂ + Zb̂``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl


@dataclass(frozen=True)
class RandomTerm:
    """One lme4 random-effects term ``(terms | columns)``.

    ``grouping`` is lme4's name in ``VarCorr`` (``b:a``, ``g``, ``g.1`` for the
    second part of ``(x || g)``); ``factor`` the name ``ranef`` uses (``g``);
    ``columns`` the key columns in the order lme4 pastes the level label.
    """

    grouping: str
    columns: tuple[str, ...]
    terms: tuple[str, ...]
    factor: str = ""

    @property
    def ranef_name(self) -> str:
        return self.factor or self.grouping

    @property
    def k(self) -> int:
        return len(self.terms)

    @property
    def ntheta(self) -> int:
        return self.k * (self.k + 1) // 2


@dataclass(frozen=True)
class Model:
    """A model spelled out by hand: response, fixed terms, random terms, offset."""

    response: str
    fixed: tuple[str, ...]  # e.g. ("x", "urban", "x:urban"), "factor(period)"
    random: tuple[RandomTerm, ...]
    intercept: bool = True
    offset: str | None = None


@dataclass
class Design:
    y: np.ndarray
    o: np.ndarray
    x: np.ndarray
    x_names: list[str]
    z: np.ndarray
    # per random term: level labels (sorted), row codes, first column in Z
    labels: list[list[str]]
    codes: list[np.ndarray]
    start: list[int]
    model: Model
    extra: dict[str, Any] = field(default_factory=dict)


FACTOR = re.compile(r"^factor\((.+)\)$")


def level_label(df: pl.DataFrame, columns: tuple[str, ...]) -> list[str]:
    """lme4's label of each row's level: the key values pasted with ``:``."""
    cols = [df[c].to_list() for c in columns]
    return [":".join(str(v) for v in vals) for vals in zip(*cols, strict=True)]


def _is_categorical(df: pl.DataFrame, term: str) -> tuple[bool, str]:
    m = FACTOR.match(term)
    if m:
        return True, m.group(1)
    return df[term].dtype == pl.String, term


def _coding(df: pl.DataFrame, term: str, full: bool) -> tuple[np.ndarray, list[str]]:
    """Columns and names of one main-effect factor or numeric column."""
    categorical, col = _is_categorical(df, term)
    if not categorical:
        return df[col].cast(pl.Float64).to_numpy()[:, None], [term]
    values = df[col].to_list()
    levels = sorted(set(values))
    keep = levels if full else levels[1:]
    mat = np.array([[1.0 if v == lev else 0.0 for lev in keep] for v in values])
    return mat.reshape(len(values), len(keep)), [f"{term}{lev}" for lev in keep]


def fixed_design(df: pl.DataFrame, model: Model) -> tuple[np.ndarray, list[str]]:
    """``X`` with treatment contrasts, columns in lme4's order and names."""
    n = df.height
    cols: list[np.ndarray] = []
    names: list[str] = []
    if model.intercept:
        cols.append(np.ones((n, 1)))
        names.append("(Intercept)")
    full_used = model.intercept  # without an intercept the first factor is coded in full
    for term in model.fixed:
        parts = term.split(":")
        if len(parts) == 1:
            full = not full_used and _is_categorical(df, term)[0]
            full_used = full_used or full
            mat, nm = _coding(df, term, full)
        else:  # an interaction whose marginal terms are in the model: contrasts throughout
            mat, nm = np.ones((n, 1)), [""]
            for part in parts:
                pm, pn = _coding(df, part, full=False)
                # R varies the first factor fastest
                mat = np.hstack(
                    [
                        mat[:, [i]] * pm[:, [j]]
                        for j in range(pm.shape[1])
                        for i in range(mat.shape[1])
                    ]
                )
                nm = [f"{a}:{b}" if a else b for b in pn for a in nm]
        cols.append(mat)
        names.extend(nm)
    return np.hstack(cols), names


def build(df: pl.DataFrame, model: Model) -> Design:
    """The dense design of ``model`` on ``df``."""
    n = df.height
    y = df[model.response].cast(pl.Float64).to_numpy()
    o = df[model.offset].cast(pl.Float64).to_numpy() if model.offset else np.zeros(n)
    x, x_names = fixed_design(df, model)
    blocks, labels, codes, start = [], [], [], []
    col = 0
    for term in model.random:
        lab = level_label(df, term.columns)
        levels = sorted(set(lab))
        index = {v: i for i, v in enumerate(levels)}
        code = np.array([index[v] for v in lab])
        vals = np.column_stack(
            [
                np.ones(n) if t == "(Intercept)" else df[t].cast(pl.Float64).to_numpy()
                for t in term.terms
            ]
        )
        zt = np.zeros((n, len(levels) * term.k))
        for j in range(term.k):
            zt[np.arange(n), code * term.k + j] = vals[:, j]
        blocks.append(zt)
        labels.append(levels)
        codes.append(code)
        start.append(col)
        col += zt.shape[1]
    z = np.hstack(blocks) if blocks else np.zeros((n, 0))
    return Design(y, o, x, x_names, z, labels, codes, start, model)


def theta_bounds(model: Model) -> list[tuple[float | None, float | None]]:
    """Diagonal entries of each T ≥ 0, off-diagonal free (lme4's bounds)."""
    out: list[tuple[float | None, float | None]] = []
    for term in model.random:
        for j in range(term.k):
            for i in range(j, term.k):
                out.append((0.0, None) if i == j else (None, None))
    return out


def t_matrices(model: Model, theta: np.ndarray) -> list[np.ndarray]:
    out, pos = [], 0
    for term in model.random:
        t = np.zeros((term.k, term.k))
        for j in range(term.k):
            for i in range(j, term.k):
                t[i, j] = theta[pos]
                pos += 1
        out.append(t)
    return out


def lam(d: Design, theta: np.ndarray) -> np.ndarray:
    """Λ_θ (dense, q × q)."""
    q = d.z.shape[1]
    big = np.zeros((q, q))
    for term, t, levels, s in zip(
        d.model.random, t_matrices(d.model, theta), d.labels, d.start, strict=True
    ):
        for lev in range(len(levels)):
            a = s + lev * term.k
            big[a : a + term.k, a : a + term.k] = t
    return big


def _pieces(d: Design, theta: np.ndarray) -> dict[str, Any]:
    n = len(d.y)
    big = lam(d, theta)
    a = d.z @ big
    v1 = a @ a.T + np.eye(n)
    chol = np.linalg.cholesky(v1)
    logdet_v1 = 2.0 * float(np.sum(np.log(np.diag(chol))))
    r = d.y - d.o
    # whiten: with V₁ = LL', X̃ = L⁻¹X and r̃ = L⁻¹r give X'V₁⁻¹X = X̃'X̃ etc.
    wx = np.linalg.solve(chol, d.x)
    wr = np.linalg.solve(chol, r)
    xtvx = wx.T @ wx
    beta = np.linalg.solve(xtvx, wx.T @ wr)
    wres = wr - wx @ beta
    rss = float(wres @ wres)
    return {
        "lam": big,
        "v1": v1,
        "xtvx": xtvx,
        "beta": beta,
        "res": r - d.x @ beta,
        "rss": rss,
        "logdet": logdet_v1,
    }


def criterion(d: Design, theta: np.ndarray, reml: bool) -> float:
    """lme4's REMLcrit (``reml``) or deviance at θ, from dense V₁."""
    n, p = d.x.shape
    pc = _pieces(d, np.asarray(theta, dtype=float))
    if reml:
        nu = n - p
        logdet_x = float(np.linalg.slogdet(pc["xtvx"])[1])
        return pc["logdet"] + logdet_x + nu * (1.0 + np.log(2.0 * np.pi * pc["rss"] / nu))
    return pc["logdet"] + n * (1.0 + np.log(2.0 * np.pi * pc["rss"] / n))


def solution(d: Design, theta: np.ndarray, reml: bool) -> dict[str, Any]:
    """β̂, vcov, σ̂², b̂, condVar, fitted values and VarCorr rows at θ."""
    n, p = d.x.shape
    theta = np.asarray(theta, dtype=float)
    pc = _pieces(d, theta)
    sigma2 = pc["rss"] / (n - p if reml else n)
    dd = pc["lam"] @ pc["lam"].T  # Var(b)/σ²
    v1inv = np.linalg.inv(pc["v1"])
    zt_v1inv = d.z.T @ v1inv
    b = dd @ zt_v1inv @ pc["res"]
    cond = sigma2 * (dd - dd @ zt_v1inv @ d.z @ dd)
    comps = []
    for term, t in zip(d.model.random, t_matrices(d.model, theta), strict=True):
        s = sigma2 * t @ t.T
        sd = np.sqrt(np.diag(s))
        for i in range(term.k):
            comps.append((term.grouping, term.terms[i], None, s[i, i], sd[i]))
        for i in range(term.k):
            for j in range(i + 1, term.k):
                cor = s[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else 0.0
                comps.append((term.grouping, term.terms[i], term.terms[j], s[i, j], cor))
    comps.append(("Residual", None, None, sigma2, np.sqrt(sigma2)))
    effects = {}
    for term, levels, s0 in zip(d.model.random, d.labels, d.start, strict=True):
        for lev, label in enumerate(levels):
            for j, name in enumerate(term.terms):
                idx = s0 + lev * term.k + j
                effects[(term.ranef_name, label, name)] = (
                    b[idx],
                    np.sqrt(max(cond[idx, idx], 0.0)),
                )
    objective = criterion(d, theta, reml)
    return {
        "objective": objective,
        "sigma2": sigma2,
        "beta": dict(zip(d.x_names, pc["beta"], strict=True)),
        "std_error": dict(
            zip(d.x_names, np.sqrt(np.diag(sigma2 * np.linalg.inv(pc["xtvx"]))), strict=True)
        ),
        "b": b,
        "cond": cond,
        "effects": effects,
        "components": comps,
        "fitted": d.o + d.x @ pc["beta"] + d.z @ b,
    }


def fitted_group_means(
    d: Design, fitted: np.ndarray
) -> dict[tuple[str, str], tuple[int, float, float]]:
    """Per (ranef name, level): rows, mean of the fitted values, mean of y."""
    out = {}
    for term, levels, code in zip(d.model.random, d.labels, d.codes, strict=True):
        for lev, label in enumerate(levels):
            rows = code == lev
            out[(term.ranef_name, label)] = (
                int(rows.sum()),
                float(fitted[rows].mean()),
                float(d.y[rows].mean()),
            )
    return out


def psd_cholesky(s: np.ndarray) -> np.ndarray:
    """Lower-triangular T with T T' = s for a positive semi-definite s (zero pivots allowed)."""
    k = s.shape[0]
    t = np.zeros((k, k))
    for j in range(k):
        d = s[j, j] - t[j, :j] @ t[j, :j]
        if d <= 1e-14 * max(1.0, abs(s[j, j])):
            continue  # a zero pivot: the column stays 0
        t[j, j] = np.sqrt(d)
        for i in range(j + 1, k):
            t[i, j] = (s[i, j] - t[i, :j] @ t[j, :j]) / t[j, j]
    return t


def theta_from_components(model: Model, rows: list[dict[str, Any]]) -> np.ndarray:
    """θ from VarCorr-style rows (grouping, term1, term2, variance): T = chol(Σ/σ²)."""
    val = {(r["grouping"], r["term1"], r["term2"]): r["variance"] for r in rows}
    sigma2 = val[("Residual", None, None)]
    theta = []
    for term in model.random:
        s = np.zeros((term.k, term.k))
        for i, ti in enumerate(term.terms):
            s[i, i] = val[(term.grouping, ti, None)]
            for j in range(i + 1, term.k):
                s[i, j] = s[j, i] = val[(term.grouping, ti, term.terms[j])]
        t = psd_cholesky(s / sigma2)
        for j in range(term.k):
            for i in range(j, term.k):
                theta.append(t[i, j])
    return np.array(theta)


def optimize(d: Design, reml: bool, seed: int = 0, restarts: int = 4) -> tuple[np.ndarray, float]:
    """Minimise the dense criterion over θ (derivative-free, with lme4's bounds).

    Nelder-Mead from several starts (1, 0.3 and 3 on the diagonal, then random),
    then the best point is polished by Powell and Nelder-Mead with tight
    tolerances until neither improves it.
    """
    from scipy.optimize import minimize

    bounds = theta_bounds(d.model)
    ntheta = len(bounds)
    rng = np.random.default_rng(seed)
    diag = np.array([b[0] is not None for b in bounds], dtype=float)
    starts = [diag * 1.0, diag * 0.3, diag * 3.0]
    starts += [
        diag * rng.uniform(0.1, 3.0, ntheta) + (1 - diag) * rng.normal(0, 0.5, ntheta)
        for _ in range(restarts)
    ]

    def f(th: np.ndarray) -> float:
        return criterion(d, th, reml)

    coarse = {"xatol": 1e-6, "fatol": 1e-10, "maxfev": 5000}
    fine = {"xatol": 1e-11, "fatol": 1e-13, "maxfev": 20000}
    best = min(
        (minimize(f, x0, method="Nelder-Mead", bounds=bounds, options=coarse) for x0 in starts),
        key=lambda r: r.fun,
    )
    x, fx = np.asarray(best.x), float(best.fun)
    for _ in range(10):
        r1 = minimize(f, x, method="Powell", bounds=bounds, options={"xtol": 1e-10, "ftol": 1e-15})
        r2 = minimize(f, r1.x, method="Nelder-Mead", bounds=bounds, options=fine)
        if r2.fun >= fx - 1e-13 * abs(fx):
            if r2.fun < fx:
                x, fx = np.asarray(r2.x), float(r2.fun)
            break
        x, fx = np.asarray(r2.x), float(r2.fun)
    return x, fx
