"""Benchmark: MovieLens-25M-shaped crossed data with ``solver = "iterative"``.

Generates (seeded numpy, written in chunks of users so that generation stays
within a few hundred MB) ``--users`` users and ``--items`` items with skewed
activity and popularity, like MovieLens 25M (162,541 users × 59,047 movies,
25,000,095 ratings; every user with at least 20):

* each user's number of ratings is ``20 + lognormal``, scaled to ``--rows``
  in all;
* items are drawn for a user with probability ``∝ (rank + 100)^−1.4`` (the
  most popular item gets ~0.4% of the ratings, the least ~15 at full size),
  with replacement: a pair may repeat (MovieLens has one rating per pair;
  repeats are rare and a repeated pair is just a cell of two rows);
* ``rating = round_half(3.5 + 0.05 year + a[user] + b[item] + e)`` clipped to
  ``[0.5, 5]`` with ``a ~ N(0, 0.45²)``, ``b ~ N(0, 0.5²)``, ``e ~ N(0, 0.85²)``
  and ``year ~ N(0, 1)`` per rating;

as Parquet under ``--data`` (reused when present; not committed), then fits

    rating ~ year + (1 | user) + (1 | item)

with ``pooljob.fit(..., solver="iterative")`` in a child process and prints
its wall and CPU time and peak RSS (``ru_maxrss`` of that process, which does nothing
else), the components with their Monte Carlo standard errors; then on a
subsample small enough for the exact solver (the ``--top`` most popular
items and one user in ``--user-fraction``) fits both solvers and prints the
relative differences of the components, of β̂, and the largest difference of
the BLUPs (at different components, so these differ by the components'
difference, not by the solver's tolerance).

    python benchmarks/bench_movielens.py --rows 2_500_000 --users 16_000 --items 6_000
    python benchmarks/bench_movielens.py          # full size: 25M rows, 160k × 60k
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FORMULA = "rating ~ year + (1 | user) + (1 | item)"


def generate(folder: Path, rows: int, users: int, items: int, seed: int, chunk: int) -> None:
    """Write the ratings as Parquet files of ``chunk`` users each."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    activity = 20 + rng.lognormal(np.log(60.0), 1.2, users)
    activity = np.maximum(20, np.round(activity * rows / activity.sum())).astype(np.int64)
    weight = (np.arange(items) + 100.0) ** -1.4
    cdf = np.cumsum(weight / weight.sum())
    item_of_rank = rng.permutation(items)  # popularity unrelated to the item's id
    a = rng.normal(0.0, 0.45, users)
    b = rng.normal(0.0, 0.5, items)
    for part, start in enumerate(range(0, users, chunk)):
        stop = min(users, start + chunk)
        user = np.repeat(np.arange(start, stop), activity[start:stop])
        rank = np.minimum(np.searchsorted(cdf, rng.random(len(user))), items - 1)
        item = item_of_rank[rank]
        year = rng.normal(0.0, 1.0, len(user))
        y = 3.5 + 0.05 * year + a[user] + b[item] + rng.normal(0.0, 0.85, len(user))
        rating = np.clip(np.round(y * 2.0) / 2.0, 0.5, 5.0)
        table = pa.table(
            {
                "user": pa.array(user, pa.int32()),
                "item": pa.array(item, pa.int32()),
                "year": pa.array(year),
                "rating": pa.array(rating),
            }
        )
        pq.write_table(table, folder / f"part-{part:04d}.parquet")


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads), seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fit_full(folder: Path) -> dict[str, Any]:
    """Child: the iterative fit of every rating; time, peak RSS, components."""
    import pooljob

    t0, c0 = time.perf_counter(), cpu_seconds()
    fit = pooljob.fit(FORMULA, str(folder / "*.parquet"), solver="iterative")
    seconds = time.perf_counter() - t0
    assert fit.approximation is not None
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - c0,
        "timings": fit.timings,
        "peak_rss_mb": peak_rss_mb(),
        "nobs": fit.nobs,
        "groups": fit.groups,
        "components": fit.components.to_dicts(),
        "coefficients": fit.coefficients.to_dicts(),
        "approximation": fit.approximation,
    }


def fit_subsample(folder: Path, top: int, fraction: int) -> dict[str, Any]:
    """Child: exact and iterative REML on the top items and a share of the users."""
    import duckdb
    import numpy as np
    import polars as pl

    import pooljob

    con = duckdb.connect()
    glob = str(folder / "*.parquet")
    data = con.execute(
        "with r as (select * from read_parquet($g)), "
        "top as (select item from r group by item order by count(*) desc limit $t) "
        "select r.* from r join top using (item) where r.user % $f = 0",
        {"g": glob, "t": top, "f": fraction},
    ).to_arrow_table()
    out: dict[str, Any] = {"rows": data.num_rows}
    fits = {}
    for solver in ("exact", "iterative"):
        t0, c0 = time.perf_counter(), cpu_seconds()
        fits[solver] = pooljob.fit(FORMULA, data, solver=solver)  # type: ignore[arg-type]
        out[f"{solver}_seconds"] = time.perf_counter() - t0
        out[f"{solver}_cpu_seconds"] = cpu_seconds() - c0
    ex, it = fits["exact"], fits["iterative"]
    out["groups"] = ex.groups
    comp = ex.components.join(it.components, on="grouping", suffix="_it")
    out["components"] = [
        {
            "grouping": r["grouping"],
            "exact": r["variance"],
            "iterative": r["variance_it"],
            "relative_difference": r["variance_it"] / r["variance"] - 1.0,
        }
        for r in comp.to_dicts()
    ]
    assert it.approximation is not None
    out["mc_se"] = {c["grouping"]: c["mc_se"] for c in it.approximation["components"]}
    beta_ex = ex.coefficients["estimate"].to_numpy()
    beta_it = it.coefficients["estimate"].to_numpy()
    out["beta_relative_difference"] = float(np.max(np.abs(beta_it / beta_ex - 1.0)))
    e = ex.effects.join(it.effects, on=["grouping", "level", "term"], suffix="_it")
    out["blup_max_abs_difference"] = float((e["estimate"] - e["estimate_it"]).abs().max())
    sd = e.filter(pl.col("cond_sd_it") > 0)
    ratio = (sd["cond_sd_it"] / sd["cond_sd"]).to_numpy()
    out["cond_sd_bound_over_exact"] = [float(np.min(ratio)), float(np.median(ratio))]
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def child(args: list[str]) -> dict[str, Any]:
    """Run this script's ``--phase`` in a fresh process and read its JSON."""
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {args[:2]} failed")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=25_000_000)
    parser.add_argument("--users", type=int, default=160_000)
    parser.add_argument("--items", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--chunk", type=int, default=10_000, help="users per Parquet file")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--top", type=int, default=3_000, help="items in the exact subsample")
    parser.add_argument("--user-fraction", type=int, default=10, help="one user in this many")
    parser.add_argument("--skip-exact", action="store_true")
    parser.add_argument("--phase", choices=("full", "subsample"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    folder = a.data or Path(__file__).parent / "data" / f"movielens-{a.rows}-{a.users}-{a.items}"
    if a.phase == "full":
        print(json.dumps(fit_full(folder)))
        return
    if a.phase == "subsample":
        print(json.dumps(fit_subsample(folder, a.top, a.user_fraction)))
        return
    if not (folder / "part-0000.parquet").exists():
        t0 = time.perf_counter()
        generate(folder, a.rows, a.users, a.items, a.seed, a.chunk)
        print(f"generated {folder} in {time.perf_counter() - t0:.1f} s")
    full = child(["--phase", "full", "--data", str(folder)])
    print(
        f"iterative fit of {full['nobs']:,} rows, groups {full['groups']}: "
        f"{full['seconds']:.1f} s wall, {full['cpu_seconds']:.1f} s CPU "
        f"(scan {full['timings']['scan']:.1f} s, fit "
        f"{full['timings']['fit']:.1f} s, tables {full['timings']['tables']:.1f} s), "
        f"peak RSS {full['peak_rss_mb']:.0f} MB"
    )
    approx = full["approximation"]
    print(
        f"  {approx['steps']} scoring steps, {approx['pcg_iterations']} PCG iterations, "
        f"Henderson residual {approx['solve_residual']:.1e}"
    )
    for c in approx["components"]:
        print(
            f"  {c['grouping']:>8}: variance {c['variance']:.6f} (MC se {c['mc_se']:.1e}, "
            f"{c['mc_se'] / c['variance']:.1e} relative; start {c['start']:.4f})"
        )
    for c in full["coefficients"]:
        print(f"  {c['term']:>12}: {c['estimate']:.6f} (se {c['std_error']:.2e})")
    if a.skip_exact:
        return
    sub = child(
        [
            "--phase",
            "subsample",
            "--data",
            str(folder),
            "--top",
            str(a.top),
            "--user-fraction",
            str(a.user_fraction),
        ]
    )
    print(
        f"subsample: {sub['rows']:,} rows, groups {sub['groups']}: exact "
        f"{sub['exact_seconds']:.1f} s ({sub['exact_cpu_seconds']:.1f} s CPU), iterative "
        f"{sub['iterative_seconds']:.1f} s ({sub['iterative_cpu_seconds']:.1f} s CPU)"
    )
    for c in sub["components"]:
        se = sub["mc_se"].get(c["grouping"], float("nan"))
        print(
            f"  {c['grouping']:>8}: exact {c['exact']:.6f} iterative {c['iterative']:.6f} "
            f"({c['relative_difference']:+.2e}; MC se {se:.1e})"
        )
    print(
        f"  β̂ largest relative difference {sub['beta_relative_difference']:.1e}; BLUPs "
        f"largest difference {sub['blup_max_abs_difference']:.1e}; cond_sd bound / exact "
        f"min {sub['cond_sd_bound_over_exact'][0]:.3f}, median "
        f"{sub['cond_sd_bound_over_exact'][1]:.3f}"
    )


if __name__ == "__main__":
    main()
