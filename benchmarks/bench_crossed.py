"""Benchmark: a crossed random-intercept model, pooljob against lme4.

Generates (seeded numpy) N rows with two large crossed factors, a small third
factor, a numeric covariate and a Gaussian response, written as Parquet (for
pooljob) and CSV (for R) under ``benchmarks/data/``:

    y = 10 + 0.5 x + a[f1] + b[f2] + c[f3] + e,
    a ~ N(0, 1.0²), b ~ N(0, 0.7²), c ~ N(0, 0.5²), e ~ N(0, 2²)

then times

* pooljob: ``pooljob.fit("y ~ x + (1 | f1) + (1 | f2) + (1 | f3)", parquet)``
  in-process (scan, statistics, fit, tables), median of ``--repeats`` runs
  after one warm-up;
* lme4: ``lmer(y ~ x + (1|f1) + (1|f2) + (1|f3), REML = TRUE)`` through
  ``Rscript``, timing only the ``lmer`` call with ``system.time`` (reading the
  CSV and making factors excluded), median of ``--r-repeats`` runs; skipped
  with a message when ``Rscript`` or lme4 is not available;

and prints both, their ratio, and the difference of the two REML criteria
(which must agree to 1e-6 relative; exit status 1 otherwise).

    python benchmarks/bench_crossed.py                    # 100k rows, 3,000 x 2,000 x 20
    python benchmarks/bench_crossed.py --only-r           # lme4 alone
    python benchmarks/bench_crossed.py --rows 1_000_000 --f1 20_000 --f2 10_000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# isort: off
import pooljob  # first: it pins BLAS to one thread before numpy loads it

# isort: on
import numpy as np
import polars as pl
from rcheck import rscript_with_lme4

FORMULA = "y ~ x + (1 | f1) + (1 | f2) + (1 | f3)"

R_SCRIPT = r"""
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
a <- commandArgs(trailingOnly = TRUE)
df <- read.csv(a[1])
for (col in c("f1", "f2", "f3")) df[[col]] <- factor(df[[col]])
times <- numeric(0)
warns <- character(0)
for (i in seq_len(as.integer(a[2]))) {
  times <- c(times, system.time(withCallingHandlers(
    m <- lmer(y ~ x + (1 | f1) + (1 | f2) + (1 | f3), data = df, REML = TRUE),
    warning = function(w) {
      warns <<- unique(c(warns, conditionMessage(w)))
      invokeRestart("muffleWarning")
    }
  ))[["elapsed"]])
}
vc <- as.data.frame(VarCorr(m))
writeLines(toJSON(list(
  times = I(times), objective = REMLcrit(m), theta = I(unname(getME(m, "theta"))),
  evaluations = m@optinfo$feval, warnings = I(warns),
  components = data.frame(grouping = vc$grp, sd = vc$sdcor),
  fixef = as.list(fixef(m)), lme4_version = as.character(packageVersion("lme4")),
  r_version = paste(R.version$major, R.version$minor, sep = ".")
), auto_unbox = TRUE, digits = NA), a[3])
"""


def generate(stem: Path, rows: int, f1: int, f2: int, f3: int, seed: int) -> tuple[Path, Path]:
    parquet, csv = stem.with_suffix(".parquet"), stem.with_suffix(".csv")
    if parquet.exists() and csv.exists():
        return parquet, csv
    rng = np.random.default_rng(seed)
    # every level is used at least once
    c1 = rng.permutation(np.concatenate([np.arange(f1), rng.integers(0, f1, rows - f1)]))
    c2 = rng.permutation(np.concatenate([np.arange(f2), rng.integers(0, f2, rows - f2)]))
    c3 = rng.permutation(np.concatenate([np.arange(f3), rng.integers(0, f3, rows - f3)]))
    x = np.round(rng.normal(0, 1, rows), 6)
    y = (
        10
        + 0.5 * x
        + rng.normal(0, 1.0, f1)[c1]
        + rng.normal(0, 0.7, f2)[c2]
        + rng.normal(0, 0.5, f3)[c3]
        + rng.normal(0, 2.0, rows)
    )
    df = pl.DataFrame(
        {"f1": c1.astype(np.int32), "f2": c2.astype(np.int32), "f3": c3.astype(np.int32)}
    ).with_columns(x=pl.Series(x), y=pl.Series(np.round(y, 6)))
    df.write_parquet(parquet)
    df.write_csv(csv)
    return parquet, csv


def time_lme4(csv: Path, repeats: int) -> dict[str, Any] | None:
    rscript = rscript_with_lme4("lme4")
    if rscript is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        script, out = Path(tmp) / "bench.R", Path(tmp) / "out.json"
        script.write_text(R_SCRIPT)
        t = time.perf_counter()
        subprocess.run([rscript, str(script), str(csv), str(repeats), str(out)], check=True)
        wall = time.perf_counter() - t
        res: dict[str, Any] = json.loads(out.read_text())
    res["wall"] = wall
    return res


def time_pooljob(parquet: Path, repeats: int) -> dict[str, Any] | None:
    try:
        fit = pooljob.fit(FORMULA, parquet)  # warm-up (imports, file cache)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fit = pooljob.fit(FORMULA, parquet)
            times.append(time.perf_counter() - t)
    except Exception as exc:  # a pooljob that cannot fit this model yet
        print(f"pooljob: failed: {type(exc).__name__}: {exc}")
        return None
    comps = {r["grouping"]: r["sd"] for r in fit.components.to_dicts()}
    return {
        "times": times,
        "objective": fit.objective,
        "components": comps,
        "optimizer": fit.optimizer,
        "timings": fit.timings,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--f1", type=int, default=3_000, help="levels of the first crossed factor")
    ap.add_argument("--f2", type=int, default=2_000, help="levels of the second crossed factor")
    ap.add_argument("--f3", type=int, default=20, help="levels of the small third factor")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeats", type=int, default=5, help="pooljob runs")
    ap.add_argument("--r-repeats", type=int, default=3, help="lme4 runs")
    ap.add_argument("--only-r", action="store_true", help="time lme4 only")
    ap.add_argument("--only-pooljob", action="store_true", help="time pooljob only")
    ap.add_argument("--data-dir", default=str(Path(__file__).parent / "data"))
    args = ap.parse_args()

    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    stem = data / f"crossed_{args.rows}_{args.f1}_{args.f2}_{args.f3}_{args.seed}"
    t = time.perf_counter()
    parquet, csv = generate(stem, args.rows, args.f1, args.f2, args.f3, args.seed)
    print(
        f"data: {parquet} ({parquet.stat().st_size / 1e6:.1f} MB), {csv.name} "
        f"({csv.stat().st_size / 1e6:.1f} MB), {time.perf_counter() - t:.1f} s"
    )
    print(f"model: {FORMULA}, REML; {args.rows:,} rows, {args.f1:,} x {args.f2:,} x {args.f3}")

    job = None if args.only_r else time_pooljob(parquet, args.repeats)
    r = None if args.only_pooljob else time_lme4(csv, args.r_repeats)

    if job is not None:
        print(
            f"pooljob: median {statistics.median(job['times']):.3f} s over {len(job['times'])} "
            f"runs, objective {job['objective']:.10f}"
        )
        print("  sd: " + ", ".join(f"{g} {v:.5f}" for g, v in job["components"].items()))
        opt, tm = job["optimizer"], job["timings"]
        print(
            f"  {opt['evaluations']} evaluations ({opt['optimizer']}); last run: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in tm.items())
        )
    if r is not None:
        print(
            f"lme4 {r['lme4_version']} (R {r['r_version']}): lmer median "
            f"{statistics.median(r['times']):.3f} s over {len(r['times'])} runs "
            f"({', '.join(f'{x:.2f}' for x in r['times'])}; Rscript wall {r['wall']:.1f} s), "
            f"objective {r['objective']:.10f}"
        )
        print("  sd: " + ", ".join(f"{c['grouping']} {c['sd']:.5f}" for c in r["components"]))
        print(f"  {r['evaluations']} evaluations of the criterion")
        for w in r["warnings"]:
            print(f"  lme4 warning: {w}")
    if job is None or r is None:
        return
    ratio = statistics.median(r["times"]) / statistics.median(job["times"])
    diff = job["objective"] - r["objective"]
    rel = abs(diff) / abs(r["objective"])
    print(f"lme4 / pooljob time: {ratio:.1f}x")
    print(f"objective pooljob - lme4: {diff:+.3e} ({rel:.1e} relative)")
    if rel > 1e-6:
        print("FAIL: the objectives differ by more than 1e-6 relative")
        sys.exit(1)
    print("objectives agree to 1e-6 relative")


if __name__ == "__main__":
    main()
