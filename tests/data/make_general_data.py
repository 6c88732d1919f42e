"""Write the generated data sets behind the general-model lme4 fixtures.

Deterministic (seeded numpy); every value is rounded to a few decimals so that
R's ``read.csv`` and DuckDB parse exactly the same doubles.  Run from the
repository root, then regenerate the fits with ``Rscript
tests/data/make_lme4_general.R`` (see LME4_GENERAL.md):

    .venv/bin/python tests/data/make_general_data.py

Data sets (all groupings are string columns; ``urban`` is categorical):

* ``cat_mixed.csv``: 400 households in 40 ZIPs, ``income`` by ``year``
  (years since 2015, 0-9: calendar years would make lme4 warn that the
  ``year:urbanY`` column is on a very different scale) and ``urban`` (N/Y),
  with a ZIP effect and a year x urban interaction.
* ``nested_crossed.csv``: ``y ~ x + (1 | a/b) + (1 | c)``: 6 ``a`` with 4
  ``b`` each (labels b1..b4 repeat across ``a``), crossed with 8 ``c``.
* ``offset.csv``: ``y ~ x + offset(o) + (1 | g)``: 25 groups, ``o`` a known
  offset (log exposure).
* ``crossed3.csv``: ``y ~ x + (1 | f1) + (1 | f2) + (1 | f3)``: 80 x 50
  levels and a small third factor of 5.
* ``slopes_crossed.csv``: ``y ~ x + urban + (1 + x | g) + (1 | h)``: a
  correlated random slope on 30 groups crossed with 12 ``h``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).parent


def cat_mixed(rng: np.random.Generator) -> pl.DataFrame:
    n, zips = 400, 40
    zip_code = rng.integers(0, zips, n)
    urban_share = rng.uniform(0.1, 0.9, zips)[zip_code]
    urban = np.where(rng.uniform(size=n) < urban_share, "Y", "N")
    year = rng.integers(0, 10, n)
    effect = rng.normal(0, 4000, zips)[zip_code]
    t = year
    is_urban = urban == "Y"
    income = (
        48000 + 900 * t + 7000 * is_urban + 450 * t * is_urban + effect + rng.normal(0, 9000, n)
    )
    return pl.DataFrame(
        {
            "zip": [f"z{z:02d}" for z in zip_code],
            "urban": urban,
            "year": year,
            "income": np.round(income).astype(np.int64),
        }
    )


def nested_crossed(rng: np.random.Generator) -> pl.DataFrame:
    rows = []
    ea = rng.normal(0, 2.0, 6)
    eb = rng.normal(0, 1.2, (6, 4))
    ec = rng.normal(0, 1.5, 8)
    for _ in range(600):
        a, b, c = int(rng.integers(0, 6)), int(rng.integers(0, 4)), int(rng.integers(0, 8))
        x = rng.normal(5, 2)
        y = 20 + 0.8 * x + ea[a] + eb[a, b] + ec[c] + rng.normal(0, 2.5)
        rows.append((f"a{a + 1}", f"b{b + 1}", f"c{c + 1}", round(x, 4), round(y, 4)))
    return pl.DataFrame(rows, schema=["a", "b", "c", "x", "y"], orient="row")


def offset(rng: np.random.Generator) -> pl.DataFrame:
    n, groups = 300, 25
    g = rng.integers(0, groups, n)
    x = rng.normal(0, 1, n)
    o = np.log(rng.uniform(0.5, 4.0, n))
    y = 3.0 + 1.5 * x + o + rng.normal(0, 0.8, groups)[g] + rng.normal(0, 1.0, n)
    return pl.DataFrame(
        {
            "g": [f"g{k:02d}" for k in g],
            "x": np.round(x, 4),
            "o": np.round(o, 4),
            "y": np.round(y, 4),
        }
    )


def crossed3(rng: np.random.Generator) -> pl.DataFrame:
    n = 1500
    f1, f2, f3 = rng.integers(0, 80, n), rng.integers(0, 50, n), rng.integers(0, 5, n)
    x = rng.uniform(0, 10, n)
    y = (
        50
        + 2.0 * x
        + rng.normal(0, 3.0, 80)[f1]
        + rng.normal(0, 2.0, 50)[f2]
        + rng.normal(0, 1.5, 5)[f3]
        + rng.normal(0, 4.0, n)
    )
    return pl.DataFrame(
        {
            "f1": [f"u{k:02d}" for k in f1],
            "f2": [f"i{k:02d}" for k in f2],
            "f3": [f"s{k}" for k in f3],
            "x": np.round(x, 3),
            "y": np.round(y, 3),
        }
    )


def slopes_crossed(rng: np.random.Generator) -> pl.DataFrame:
    n, ng, nh = 800, 30, 12
    g, h = rng.integers(0, ng, n), rng.integers(0, nh, n)
    cov = np.array([[4.0, 0.6], [0.6, 0.5]])  # sd 2 and 0.71, correlation 0.42
    b = rng.multivariate_normal([0, 0], cov, ng)
    x = rng.normal(0, 2, n)
    urban = np.where(rng.uniform(size=n) < 0.4, "Y", "N")
    y = (
        10
        + (1.0 + b[g, 1]) * x
        + b[g, 0]
        + 1.5 * (urban == "Y")
        + rng.normal(0, 1.0, nh)[h]
        + rng.normal(0, 1.5, n)
    )
    return pl.DataFrame(
        {
            "g": [f"g{k:02d}" for k in g],
            "h": [f"h{k:02d}" for k in h],
            "urban": urban,
            "x": np.round(x, 4),
            "y": np.round(y, 4),
        }
    )


def main() -> None:
    makers = {
        "cat_mixed": (cat_mixed, 20261201),
        "nested_crossed": (nested_crossed, 20261202),
        "offset": (offset, 20261203),
        "crossed3": (crossed3, 20261204),
        "slopes_crossed": (slopes_crossed, 20261205),
    }
    for name, (make, seed) in makers.items():
        df = make(np.random.default_rng(seed))
        path = HERE / f"{name}.csv"
        df.write_csv(path)
        print(f"{path.name}: {df.height} rows, {path.stat().st_size / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
