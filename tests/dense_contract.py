"""A slow, obviously correct reference for the columns of ``estimates.parquet``.

Only for tests, with no use of pooljob's code: dense X and Z, Henderson's
mixed-model equations at given variance components, and for every group of
every grouping the four definitions of docs/outputs.md:

- ``estimate``: the mean over the group's rows of ``x_iᵀβ̂ + z_iᵀb̂``;
- ``parent``: the same with the effects of the group's grouping and of the
  groupings nested in it (judged from the data) set to 0;
- ``std_error``: ``√(aᵀ σ² C⁻¹ a)``, ``a`` the mean of ``[x_i, z_i]`` over the
  rows and ``C`` Henderson's coefficient matrix;
- ``shrinkage``: ``Var(b_g | y, β) / τ²``, lme4's ``condVar`` over the
  grouping's variance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl


def codes_of(
    df: pl.DataFrame, columns: tuple[str, ...]
) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """Each row's level of the grouping by ``columns``, and the levels' key tuples."""
    keys = list(zip(*(df[c].to_list() for c in columns), strict=True))
    levels = sorted(set(keys), key=repr)
    index = {k: i for i, k in enumerate(levels)}
    return np.array([index[k] for k in keys]), levels


def reference(
    df: pl.DataFrame,
    response: str,
    covariates: list[str],
    groupings: list[tuple[str, tuple[str, ...], float]],
    sigma2: float,
) -> dict[tuple[str, tuple[Any, ...]], dict[str, float]]:
    """The four numbers per (grouping name, key tuple); intercept-only random terms.

    ``groupings`` lists (lme4 name, key columns, variance τ²) for each term.
    """
    n = df.height
    y = df[response].to_numpy().astype(float)
    x = np.column_stack([np.ones(n)] + [df[c].to_numpy().astype(float) for c in covariates])
    codes, levels, zs = [], [], []
    for _, cols, _ in groupings:
        code, lev = codes_of(df, cols)
        codes.append(code)
        levels.append(lev)
        z = np.zeros((n, len(lev)))
        z[np.arange(n), code] = 1.0
        zs.append(z)
    z = np.hstack(zs)
    ginv = np.concatenate(
        [np.full(zk.shape[1], 1.0 / tau2) for (_, _, tau2), zk in zip(groupings, zs, strict=True)]
    )
    p = x.shape[1]
    c = np.block([[x.T @ x, x.T @ z], [z.T @ x, z.T @ z + sigma2 * np.diag(ginv)]])
    cinv = np.linalg.inv(c)
    sol = cinv @ np.concatenate([x.T @ y, z.T @ y])
    cond = sigma2 * np.linalg.inv(z.T @ z + sigma2 * np.diag(ginv))
    offsets = np.cumsum([0] + [zk.shape[1] for zk in zs])
    out = {}
    for k, (name, _, tau2) in enumerate(groupings):
        nested = [
            j
            for j in range(len(groupings))
            if len(set(zip(codes[j], codes[k], strict=True))) == len(set(codes[j]))
        ]
        for g, key in enumerate(levels[k]):
            rows = codes[k] == g
            a = np.concatenate([x[rows].mean(axis=0), z[rows].mean(axis=0)])
            a_parent = a.copy()
            for j in nested:
                a_parent[p + offsets[j] : p + offsets[j + 1]] = 0.0
            i = offsets[k] + g
            out[(name, key)] = {
                "n": float(rows.sum()),
                "raw_mean": float(y[rows].mean()),
                "estimate": float(a @ sol),
                "parent": float(a_parent @ sol),
                "std_error": float(np.sqrt(sigma2 * a @ cinv @ a)),
                "shrinkage": float(cond[i, i] / tau2),
            }
    return out
