"""The Laplace criterion of pooljob.model.glmm against a slow, dense reference.

The reference builds Z and Λ as dense matrices, finds the conditional mode
by plain Newton iterations on the penalised deviance and takes
``log|Λ'Z'WZΛ + I|`` from a dense Cholesky: no blocks, no cells, no
bookkeeping.  Designs: crossed intercepts, a correlated random slope on a
cell-constant covariate, nested groupings, and three crossed groupings with
slopes whose dense block pairs terms of unequal (2 and 1) or equal widths
(2 and 2); binomial and Poisson.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.special import expit

from pooljob.model.glmm import count_model, pirls
from pooljob.model.glmm_fit import fit_counts

Array = NDArray[np.float64]


def dense_laplace(
    family: str, y: Array, t: Array, x: Array, zs: list[Array], ts: list[Array], beta: Array
) -> float:
    """−2 log-likelihood by Laplace, dense: zs[k] is (C, q_k p_k), ts[k] the template."""
    z = np.hstack(zs)
    lam = np.zeros((z.shape[1], z.shape[1]))
    pos = 0
    for zk, tk in zip(zs, ts, strict=True):
        p = tk.shape[0]
        for level in range(zk.shape[1] // p):
            sl = slice(pos + level * p, pos + (level + 1) * p)
            lam[sl, sl] = tk
        pos += zk.shape[1]
    zl = z @ lam
    u = np.zeros(z.shape[1])

    def parts(u: Array) -> tuple[Array, Array, float]:
        eta = x @ beta + zl @ u
        if family == "binomial":
            mu, w = expit(eta), expit(eta) * (1 - expit(eta))
            ll = y * eta - t * np.logaddexp(0, eta)
        else:
            mu, w = np.exp(eta), np.exp(eta)
            ll = y * eta - t * np.exp(eta)
        return t * mu, t * w, float(-2 * ll.sum() + u @ u)

    for _ in range(100):
        mu, w, pd = parts(u)
        grad = -2 * zl.T @ (y - mu) + 2 * u
        hess = 2 * (zl.T @ (w[:, None] * zl) + np.eye(len(u)))
        step = np.linalg.solve(hess, grad)
        u = u - step
        if np.max(np.abs(step)) < 1e-13:
            break
    mu, w, pd = parts(u)
    chol = np.linalg.cholesky(zl.T @ (w[:, None] * zl) + np.eye(len(u)))
    return pd + 2 * float(np.log(np.diag(chol)).sum())


def indicators(codes: Array, q: int, values: Array | None = None) -> Array:
    out = np.zeros((len(codes), q))
    out[np.arange(len(codes)), codes] = 1.0
    if values is None:
        return out
    # intercept and slope per level, interleaved (level-major)
    both = np.zeros((len(codes), 2 * q))
    both[np.arange(len(codes)), 2 * codes] = 1.0
    both[np.arange(len(codes)), 2 * codes + 1] = values
    return both


def design(seed: int, kind: str, family: str) -> tuple[object, ...]:
    rng = np.random.default_rng(seed)
    c = 60
    a = rng.integers(0, 7, c)
    b = rng.integers(0, 4, c)
    a[:7], b[:4] = np.arange(7), np.arange(4)
    v = rng.normal(size=c)
    x = np.column_stack([np.ones(c), rng.integers(0, 2, c).astype(float)])
    t = rng.integers(1, 30, c).astype(float)
    eta = 0.3 * v - 0.5 + rng.normal(0, 0.6, 7)[a] + rng.normal(0, 0.4, 4)[b]
    y = (
        rng.binomial(t.astype(int), expit(eta)).astype(float)
        if family == "binomial"
        else (rng.poisson(t * np.exp(eta)).astype(float))
    )
    if kind == "crossed":
        random = [(a, 7, np.ones((c, 1)), [(0, 0)]), (b, 4, np.ones((c, 1)), [(0, 0)])]
        dense = [indicators(a, 7), indicators(b, 4)]
    elif kind == "slope":
        random = [(a, 7, np.column_stack([np.ones(c), v]), [(0, 0), (1, 0), (1, 1)])]
        dense = [indicators(a, 7, v)]
    elif kind in ("unequal_widths", "equal_widths"):
        # slopes on a and b; a (14 columns) comes first, b and d form the dense block, so
        # its pair blocks Z_b'WZ_d are 2 x 1, or 2 x 2 and not symmetric ([1 v]'[1 w])
        d = rng.integers(0, 3, c)
        d[:3] = np.arange(3)
        w = rng.normal(size=c)
        slope = [(0, 0), (1, 0), (1, 1)]
        random = [
            (a, 7, np.column_stack([np.ones(c), v]), slope),
            (b, 4, np.column_stack([np.ones(c), v]), slope),
        ]
        dense = [indicators(a, 7, v), indicators(b, 4, v)]
        if kind == "unequal_widths":
            random.append((d, 3, np.ones((c, 1)), [(0, 0)]))
            dense.append(indicators(d, 3))
        else:
            random.append((d, 3, np.column_stack([np.ones(c), w]), slope))
            dense.append(indicators(d, 3, w))
    else:  # nested: b within a
        ab = a * 4 + b
        _, ab = np.unique(ab, return_inverse=True)
        qab = int(ab.max()) + 1
        random = [(ab, qab, np.ones((c, 1)), [(0, 0)]), (a, 7, np.ones((c, 1)), [(0, 0)])]
        dense = [indicators(ab, qab), indicators(a, 7)]
    return y, t, x, random, dense


@pytest.mark.parametrize("family", ["binomial", "poisson"])
@pytest.mark.parametrize("kind", ["crossed", "slope", "nested", "unequal_widths", "equal_widths"])
def test_criterion_matches_dense(family: str, kind: str) -> None:
    y, t, x, random, dense = design(3, kind, family)  # type: ignore[misc]
    model = count_model(family, y, t, np.zeros(len(y)), 0.0, x, random)  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    for _ in range(4):
        theta = rng.uniform(0.2, 1.5, model.n_theta)
        if kind == "slope":
            theta[1] = rng.uniform(-0.5, 0.5)
        beta = rng.normal(0, 0.3, 2)
        ours = pirls(model, theta, beta).deviance
        # templates in design order (the model keeps blocks by size)
        ts = []
        by_design = {d: k for k, d in enumerate(model.order)}
        offsets = np.cumsum([0] + [len(f) for f in model.free])
        for d in range(len(random)):
            k = by_design[d]
            p = model.widths[k]
            tk = np.zeros((p, p))
            for (i, j), val in zip(model.free[k], theta[offsets[k] : offsets[k + 1]], strict=True):
                tk[i, j] = val
            ts.append(tk)
        ref = dense_laplace(family, y, t, x, dense, ts, beta)  # type: ignore[arg-type]
        assert ours == pytest.approx(ref, rel=1e-11, abs=1e-9)


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_optimum_is_stationary(family: str) -> None:
    """At the fit, the dense criterion's finite-difference gradient in (θ, β) is ~0."""
    y, t, x, random, dense = design(11, "crossed", family)  # type: ignore[misc]
    model = count_model(family, y, t, np.zeros(len(y)), 0.0, x, random)  # type: ignore[arg-type]
    fit = fit_counts(model)
    xb = np.concatenate([fit.theta, fit.beta])
    by_design = {d: k for k, d in enumerate(model.order)}

    def f(v: Array) -> float:
        ts = [np.array([[v[by_design[d]]]]) for d in range(2)]
        return dense_laplace(family, y, t, x, dense, ts, v[2:])  # type: ignore[arg-type]

    for i in range(len(xb)):
        if i < 2 and xb[i] < 1e-3:
            continue  # on the boundary
        h = 1e-5 * max(1.0, abs(xb[i]))
        e = np.zeros_like(xb)
        e[i] = h
        g = (f(xb + e) - f(xb - e)) / (2 * h)
        assert abs(g) < 1e-4, (i, g)
    assert fit.deviance == pytest.approx(f(xb), rel=1e-10)


@pytest.mark.parametrize("family", ["binomial", "poisson"])
@pytest.mark.parametrize("kind", ["crossed", "nested"])
def test_exact_gradient_matches_differences(family: str, kind: str) -> None:
    """pooljob.model.laplace's gradient of the Laplace criterion against central differences."""
    from pooljob.model.laplace import laplace_gradient

    y, t, x, random, _ = design(3, kind, family)  # type: ignore[misc]
    model = count_model(family, y, t, np.zeros(len(y)), 0.0, x, random)  # type: ignore[arg-type]
    assert all(model.unit)
    rng = np.random.default_rng(1)
    for _ in range(3):
        theta = rng.uniform(0.2, 1.5, model.n_theta)
        beta = rng.normal(0, 0.3, 2)
        grad = laplace_gradient(model, theta, beta, pirls(model, theta, beta))
        xb = np.concatenate([theta, beta])
        for i in range(len(xb)):
            e = np.zeros_like(xb)
            e[i] = 1e-5
            up, down = xb + e, xb - e
            fd = (
                pirls(model, up[: model.n_theta], up[model.n_theta :]).deviance
                - pirls(model, down[: model.n_theta], down[model.n_theta :]).deviance
            ) / 2e-5
            assert grad[i] == pytest.approx(fd, rel=1e-6, abs=1e-6)
