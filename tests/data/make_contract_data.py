"""Write the generated data sets behind the output-contract lme4 fixtures.

Deterministic (seeded numpy); every value is rounded to 4 decimals so that R's
``read.csv`` and DuckDB parse exactly the same doubles.  Run from the
repository root, then regenerate the fits with ``Rscript
tests/data/make_lme4_contract.R`` (see LME4_CONTRACT.md):

    .venv/bin/python tests/data/make_contract_data.py

Data sets (every grouping is a string column):

* ``unequal_widths.csv``: ``y ~ x1 + x2 + (0 + z1 + z2 | groups) + (1 | v1) +
  (1 | v2)``: 1,000 rows, correlated random slopes on ``z1`` and ``z2`` (no
  random intercept) for 30 ``groups``, crossed with random intercepts on 20
  ``v1`` and 15 ``v2`` (random-effect blocks of unequal widths, 2, 1, 1).
  The grouping columns are literally named ``v1`` and ``v2``.
* ``equal_widths.csv``: ``y ~ x1 + (0 + z1 + z2 | g1) + (0 + z1 + z2 | g2) +
  (1 | w)``: 1,200 rows, two crossed factors with correlated two-term slope
  blocks (24 ``g1``, 18 ``g2``) and a random intercept on 10 ``w``.
* ``booleans.csv``: ``y ~ urban + (1 | g)``: 500 rows, 25 groups ``g``, a
  boolean ``urban`` written as ``true``/``false`` (DuckDB reads BOOLEAN) and
  a covariate ``x``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).parent


def unequal_widths(rng: np.random.Generator) -> pl.DataFrame:
    n, ng, n1, n2 = 1000, 30, 20, 15
    g, v1, v2 = rng.integers(0, ng, n), rng.integers(0, n1, n), rng.integers(0, n2, n)
    cov = np.array([[1.0, 0.35], [0.35, 0.49]])  # sd 1 and 0.7, correlation 0.5
    b = rng.multivariate_normal([0, 0], cov, ng)
    x1 = rng.normal(0, 1, n)
    x2 = rng.uniform(0, 4, n)
    z1 = rng.normal(0.5, 1, n)
    z2 = rng.uniform(-1, 2, n)
    y = (
        5
        + 1.5 * x1
        - 0.7 * x2
        + b[g, 0] * z1
        + b[g, 1] * z2
        + rng.normal(0, 1.2, n1)[v1]
        + rng.normal(0, 0.9, n2)[v2]
        + rng.normal(0, 1.0, n)
    )
    return pl.DataFrame(
        {
            "y": np.round(y, 4),
            "x1": np.round(x1, 4),
            "x2": np.round(x2, 4),
            "z1": np.round(z1, 4),
            "z2": np.round(z2, 4),
            "groups": [f"g{k:02d}" for k in g],
            "v1": [f"a{k:02d}" for k in v1],
            "v2": [f"b{k:02d}" for k in v2],
        }
    )


def equal_widths(rng: np.random.Generator) -> pl.DataFrame:
    n, n1, n2, nw = 1200, 24, 18, 10
    g1, g2, w = rng.integers(0, n1, n), rng.integers(0, n2, n), rng.integers(0, nw, n)
    b1 = rng.multivariate_normal([0, 0], [[1.0, -0.3], [-0.3, 0.64]], n1)  # cor -0.375
    b2 = rng.multivariate_normal([0, 0], [[0.49, 0.21], [0.21, 0.36]], n2)  # cor 0.5
    x1 = rng.normal(2, 1.5, n)
    z1 = rng.normal(1, 1, n)
    z2 = rng.normal(-0.5, 1, n)
    y = (
        3
        + 0.8 * x1
        + (b1[g1, 0] + b2[g2, 0]) * z1
        + (b1[g1, 1] + b2[g2, 1]) * z2
        + rng.normal(0, 1.0, nw)[w]
        + rng.normal(0, 1.0, n)
    )
    return pl.DataFrame(
        {
            "y": np.round(y, 4),
            "x1": np.round(x1, 4),
            "z1": np.round(z1, 4),
            "z2": np.round(z2, 4),
            "g1": [f"p{k:02d}" for k in g1],
            "g2": [f"q{k:02d}" for k in g2],
            "w": [f"w{k:02d}" for k in w],
        }
    )


def booleans(rng: np.random.Generator) -> pl.DataFrame:
    n, ng = 500, 25
    g = rng.integers(0, ng, n)
    urban = rng.uniform(size=n) < rng.uniform(0.2, 0.8, ng)[g]
    x = rng.normal(0, 1, n)
    y = 10 + 2.0 * urban + 0.6 * x + rng.normal(0, 1.5, ng)[g] + rng.normal(0, 2.0, n)
    return pl.DataFrame(
        {
            "y": np.round(y, 4),
            "urban": urban,  # polars writes booleans as true/false
            "g": [f"g{k:02d}" for k in g],
            "x": np.round(x, 4),
        }
    )


def main() -> None:
    makers = {
        "unequal_widths": (unequal_widths, 20261301),
        "equal_widths": (equal_widths, 20261302),
        "booleans": (booleans, 20261303),
    }
    for name, (make, seed) in makers.items():
        df = make(np.random.default_rng(seed))
        path = HERE / f"{name}.csv"
        df.write_csv(path)
        print(f"{path.name}: {df.height} rows, {path.stat().st_size / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
