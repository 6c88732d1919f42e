"""A slow, obviously correct reference: dense matrices on small data.

Only for tests: builds V = σ²(I + Σ_ℓ r_ℓ Z_ℓ Z_ℓ') and Henderson's mixed-model
equations explicitly, with no use of pooljob's code.
"""

from __future__ import annotations

import numpy as np


def indicators(codes: np.ndarray) -> np.ndarray:
    z = np.zeros((len(codes), int(codes.max()) + 1))
    z[np.arange(len(codes)), codes] = 1.0
    return z


def criterion(y: np.ndarray, zs: list[np.ndarray], r: np.ndarray, reml: bool) -> float:
    """Profiled REML criterion or −2 log-likelihood, from dense V."""
    n = len(y)
    h = np.eye(n) + sum(rk * z @ z.T for rk, z in zip(r, zs, strict=True))
    x = np.ones((n, 1))
    hinv = np.linalg.inv(h)
    xtx = x.T @ hinv @ x
    beta = np.linalg.solve(xtx, x.T @ hinv @ y)
    res = y - x @ beta
    rss = float(res @ hinv @ res)
    logdet_h = np.linalg.slogdet(h)[1]
    if reml:
        nu = n - 1
        return float(logdet_h + np.linalg.slogdet(xtx)[1] + nu * (1 + np.log(2 * np.pi * rss / nu)))
    return float(logdet_h + n * (1 + np.log(2 * np.pi * rss / n)))


def henderson(y: np.ndarray, zs: list[np.ndarray], r: np.ndarray, sigma2: float):
    """β̂, b̂ and the inverse of Henderson's coefficient matrix (times σ²)."""
    n = len(y)
    x = np.ones((n, 1))
    z = np.hstack(zs)
    dinv = np.concatenate([np.full(zk.shape[1], 1.0 / rk) for rk, zk in zip(r, zs, strict=True)])
    c = np.block([[x.T @ x, x.T @ z], [z.T @ x, z.T @ z + np.diag(dinv)]])
    sol = np.linalg.solve(c, np.concatenate([x.T @ y, z.T @ y]))
    cinv = np.linalg.inv(c) * sigma2
    return sol[0], sol[1:], cinv


def cond_var(zs: list[np.ndarray], r: np.ndarray, sigma2: float, n: int) -> np.ndarray:
    """Var(b | y, β) = σ² (D − D Z' H⁻¹ Z D): lme4's condVar, all terms stacked."""
    z = np.hstack(zs)
    d = np.diag(np.concatenate([np.full(zk.shape[1], rk) for rk, zk in zip(r, zs, strict=True)]))
    h = np.eye(n) + z @ d @ z.T
    return sigma2 * (d - d @ z.T @ np.linalg.solve(h, z @ d))
