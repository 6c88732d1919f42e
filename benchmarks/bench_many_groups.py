"""Many groups: the work after the SQL pass, for 1M and 10M leaf groups.

The scan's output (one row per leaf group: count, mean, within sum of
squares, and the key columns) is generated directly in numpy, for a
three-level nested tree ``(1 | state/county/zip)`` — no SQL pass, no rows.
Then, as a run does after its scan, it times:

* ``tree``: :func:`pooljob.scan.tree.nested_statistics` (order the cells
  into the tree, check nesting, code the levels);
* ``fit``: :func:`pooljob.model.nested_fit.fit_nested` (Newton on the exact REML
  criterion, then the smoothing passes), with its criterion evaluations;
* ``tables``: :func:`pooljob.outputs.tables.build` (estimates and effects at every
  level, as polars tables);
* ``write``: the four Parquet outputs.

Usage::

    python benchmarks/bench_many_groups.py            # 1M and 10M leaves
    python benchmarks/bench_many_groups.py 1000000    # one size

Prints seconds per stage and the peak resident memory of the process.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from pooljob.model.cells import CellTable
from pooljob.model.formula import parse_formula
from pooljob.model.nested_fit import fit_nested
from pooljob.outputs.tables import build
from pooljob.scan.tree import nested_statistics

FORMULA = parse_formula("y ~ 1 + (1 | state/county/zip)")
STATES = 50


def cells(leaves: int, seed: int = 42) -> CellTable:
    """Per-leaf statistics of a nested tree: 50 states, ~leaves/100 counties, ~100 zips each."""
    rng = np.random.default_rng(seed)
    counties = max(leaves // 100, STATES)
    county_state = rng.integers(0, STATES, counties)
    zip_county = np.sort(rng.integers(0, counties, leaves))
    zip_code = np.arange(leaves) - np.searchsorted(zip_county, zip_county)  # 0.. within county
    state = county_state[zip_county]
    n = rng.geometric(0.2, leaves).astype(np.float64)  # 1 to ~60 rows, mean 5
    sigma, tau = 15.0, np.array([8.0, 4.0, 3.0])
    mean = (
        58.0
        + rng.normal(0, tau[0], STATES)[state]
        + rng.normal(0, tau[1], counties)[zip_county]
        + rng.normal(0, tau[2], leaves)
        + rng.normal(0, 1, leaves) * sigma / np.sqrt(n)
    )
    within = sigma**2 * rng.chisquare(np.maximum(n - 1, 1e-9))
    within[n == 1] = 0.0
    shuffle = rng.permutation(leaves)  # a scan returns its groups in no particular order
    keys = pl.DataFrame(
        {
            "state": pl.Series(np.char.add("s", state[shuffle].astype(str))),
            "county": zip_county[shuffle].astype(np.int64),
            "zip": zip_code[shuffle].astype(np.int64),
        }
    )
    return CellTable(
        keys=keys,
        n=n[shuffle],
        mean=mean[shuffle, None],
        comoment=within[shuffle, None, None],
        shifts=np.zeros(1),
        rows={"read": int(n.sum()), "used": int(n.sum()), "dropped": {}},
    )


def peak_gb() -> float:
    """Peak resident memory of this process (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def bench(leaves: int) -> dict[str, float]:
    table = cells(leaves)
    t0 = time.perf_counter()
    gs = nested_statistics(table, FORMULA, "generated cells")
    t1 = time.perf_counter()
    fitted = fit_nested(gs.stats, "reml")
    t2 = time.perf_counter()
    result = build(FORMULA, gs, fitted, 0.95, "gaussian")
    t3 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for name in ("estimates", "effects", "coefficients", "components"):
            getattr(result, name).write_parquet(Path(folder) / f"{name}.parquet")
    t4 = time.perf_counter()
    print(
        f"{leaves:>11,} leaves ({gs.stats.sizes[1]:,} counties, {int(gs.stats.nobs):,} rows): "
        f"tree {t1 - t0:.2f} s, fit {t2 - t1:.2f} s "
        f"({fitted.optimizer.evaluations} evaluations, converged {fitted.converged}), "
        f"tables {t3 - t2:.2f} s, write {t4 - t3:.2f} s; "
        f"after the scan {t4 - t0:.2f} s; peak memory {peak_gb():.1f} GB",
        flush=True,
    )
    return {"tree": t1 - t0, "fit": t2 - t1, "tables": t3 - t2, "write": t4 - t3}


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [1_000_000, 10_000_000]
    for leaves in sizes:
        bench(leaves)


if __name__ == "__main__":
    main(sys.argv[1:])
