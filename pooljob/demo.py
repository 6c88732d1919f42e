"""The demo data set: household income by ZIP within county within state.

Deterministic (a fixed seed) and small.  Group sizes are very uneven, as in
real data: big ZIPs with hundreds of rows, many with one or two, and, as in
the story of the README, ``DC`` with a single household, so that its
partially pooled estimate visibly moves toward the regional mean.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl

STATES = {  # state: number of counties
    "MD": 8,
    "VA": 10,
    "PA": 9,
    "DE": 3,
    "WV": 6,
    "NJ": 7,
}


def demo_frame(rows: int = 20_000, seed: int = 2012) -> pl.DataFrame:
    """Simulate the rows: income = 62k + state + county + zip effects + noise.

    True standard deviations: state 6,000, county 4,000, ZIP 3,000,
    household 15,000.
    """
    rng = np.random.default_rng(seed)
    zips: list[tuple[str, str, str, float]] = []
    zip_code = 15_000
    for state, n_counties in STATES.items():
        s_eff = rng.normal(0.0, 6_000.0)
        for c in range(n_counties):
            county = f"c{c + 1:02d}"
            c_eff = rng.normal(0.0, 4_000.0)
            for _ in range(int(rng.integers(2, 9))):
                zip_code += int(rng.integers(1, 40))
                effect = s_eff + c_eff + rng.normal(0.0, 3_000.0)
                zips.append((state, county, f"{zip_code:05d}", effect))
    weights = rng.pareto(1.2, len(zips)) + 0.02
    sizes = np.maximum(1, np.floor(weights / weights.sum() * rows)).astype(int)
    small = rng.choice(len(zips), size=len(zips) // 5, replace=False)
    sizes[small] = rng.integers(1, 3, size=len(small))
    sizes[np.argmax(sizes)] += max(0, rows - 1 - int(sizes.sum()))
    idx = np.repeat(np.arange(len(zips)), sizes)
    true_mean = 62_000.0 + np.array([z[3] for z in zips])
    income = true_mean[idx] + rng.normal(0.0, 15_000.0, len(idx))
    frame = pl.DataFrame(
        {
            "state": [zips[i][0] for i in idx],
            "county": [zips[i][1] for i in idx],
            "zip": [zips[i][2] for i in idx],
            "income": np.round(income, 2),
        }
    )
    dc = pl.DataFrame({"state": ["DC"], "county": ["c01"], "zip": ["20001"], "income": [81_500.0]})
    return pl.concat([frame, dc])


def write_demo_data(directory: str | Path, rows: int = 20_000, seed: int = 2012) -> Path:
    """Write the demo rows as Parquet, hive-partitioned by state, and return the folder."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    frame = demo_frame(rows, seed)
    con = duckdb.connect(config={"threads": 1})
    try:
        con.register("demo", frame)
        target = str(out).replace("'", "''")
        con.execute(
            "copy (select * from demo) to '" + target + "' "
            "(format parquet, partition_by (state), overwrite_or_ignore true)"
        )
    finally:
        con.close()
    return out
