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


POLL_STATES = ("MD", "VA", "PA", "DE", "WV", "NJ", "NY", "OH")
AGES = ("18-29", "30-44", "45-64", "65+")


def poll_frames(
    rows: int = 30_000, seed: int = 2012, states: tuple[str, ...] = POLL_STATES
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A non-representative poll and its population, as in the Xbox-poll story.

    Cells are state × sex × age with known probabilities (logit scale:
    women +0.5, men −0.5, age −0.6 … +0.7, state effects N(0, 0.4²)); the
    population has census-like counts; the poll over-samples men 12:1 and
    the young 4:1, so that about 92% of its rows are men.  Returns
    ``(poll, population)``: the poll's 0/1 ``vote`` rows, and the cells with
    their ``population`` count and true probability ``p``.
    """
    rng = np.random.default_rng(seed)
    age_eff = (-0.6, -0.2, 0.3, 0.7)
    cells = []
    for state in states:
        s_eff = rng.normal(0.0, 0.4)
        size = int(rng.integers(500_000, 10_000_000))
        for sex, sex_eff, share in (("F", 0.5, 0.52), ("M", -0.5, 0.48)):
            for a, age in enumerate(AGES):
                eta = -0.1 + sex_eff + age_eff[a] + s_eff
                count = int(size * share * (0.22, 0.26, 0.32, 0.20)[a])
                cells.append((state, sex, age, count, 1.0 / (1.0 + np.exp(-eta))))
    pop = pl.DataFrame(cells, schema=["state", "sex", "age", "population", "p"], orient="row")
    bias = np.where(pop["sex"] == "M", 12.0, 1.0) * np.array(
        [{"18-29": 4.0, "30-44": 2.5, "45-64": 1.5, "65+": 1.0}[a] for a in pop["age"]]
    )
    weight = pop["population"].to_numpy() * bias
    pick = rng.choice(pop.height, size=rows, p=weight / weight.sum())
    vote = (rng.random(rows) < pop["p"].to_numpy()[pick]).astype(np.int8)
    poll = pop[pick].select("state", "sex", "age").with_columns(pl.Series("vote", vote))
    return poll, pop


def write_poll_data(directory: str | Path, rows: int = 30_000, seed: int = 2012) -> Path:
    """Write ``poll.parquet`` and ``population.parquet`` into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    poll, population = poll_frames(rows, seed)
    poll.write_parquet(out / "poll.parquet")
    population.drop("p").write_parquet(out / "population.parquet")
    return out
