"""Benchmark: a binomial model with a continuous covariate, pooljob against glmer on the rows.

A continuous covariate varies within every group, so pooljob's cells are the
distinct (keys, covariate values): about one per row.  Generates (seeded
numpy) N rows as Parquet under ``benchmarks/data/`` — 200 groups ``g`` of
uneven size, ``sex`` (F/M), a continuous ``x ~ N(0, 1)`` rounded to 6
decimals, and a 0/1 response::

    logit P(y) = -0.5 + 0.3 [sex = M] + 0.8 x + a[g],    a ~ N(0, 0.5²)

then times, alternately,

* pooljob: ``pooljob.fit("y ~ sex + x + (1 | g)", "<dir>/*.parquet",
  family="binomial")`` in-process (the DuckDB scan to per-cell counts, the
  Laplace fit, the output tables), median of ``--repeats`` runs after one
  warm-up;
* glmer: ``glmer(y ~ sex + x + (1 | g), family = binomial)`` (default
  control, nAGQ = 1) on the same rows (a CSV written once) through
  ``Rscript``, ``system.time`` around the ``glmer`` call only, one fresh
  Rscript per run, median of ``--r-repeats`` runs (default 1: glmer takes
  ~3 min on 1M rows; about 9 min in all by default); skipped when Rscript
  or lme4 is missing.

It prints both medians and their ratio, and checks that pooljob's
log-likelihood is no worse than glmer's (1e-6 relative slack) and that the
fixed effects and the variance agree within 2e-3 relative (glmer's default
PIRLS tolerance; see tests/test_lme4_glmm.py).  Then, unless ``--big 0``, it
fits ``--big`` rows (default 10M, ~10M cells) with pooljob alone in a fresh
process and prints its time and peak resident memory (``ru_maxrss``).

Exit status 1 when a check fails.

    python benchmarks/bench_glmm_rows.py                  # 1M rows vs glmer, then 10M alone
    python benchmarks/bench_glmm_rows.py --r-repeats 3    # as in docs/rates.md (~15 min)
    python benchmarks/bench_glmm_rows.py --rows 200_000 --big 0
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

FORMULA = "y ~ sex + x + (1 | g)"

R_SCRIPT = r"""
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
a <- commandArgs(trailingOnly = TRUE)
df <- read.csv(a[1])
df$g <- factor(df$g); df$sex <- factor(df$sex)
warns <- character(0)
elapsed <- system.time(withCallingHandlers(
  m <- glmer(y ~ sex + x + (1 | g), data = df, family = binomial),
  warning = function(w) {
    warns <<- unique(c(warns, conditionMessage(w)))
    invokeRestart("muffleWarning")
  }
))[["elapsed"]]
vc <- as.data.frame(VarCorr(m))
writeLines(toJSON(list(
  time = elapsed, loglik = as.numeric(logLik(m)), nobs = nobs(m), warnings = I(warns),
  variance = vc$vcov[1], fixef = as.list(fixef(m)),
  lme4_version = as.character(packageVersion("lme4"))
), auto_unbox = TRUE, digits = NA), a[2])
"""

CHILD = r"""
import json, resource, sys, time
import pooljob
t = time.perf_counter()
fit = pooljob.fit(sys.argv[1], sys.argv[2], family="binomial")
print(json.dumps({"seconds": time.perf_counter() - t, "nobs": fit.nobs,
                  "loglik": fit.loglik, "converged": fit.converged,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate(folder: Path, rows: int, seed: int, files: int = 8) -> Path:
    """Write the rows as ``files`` Parquet files under ``folder`` (kept between runs)."""
    done = folder / "_done"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    size = rng.lognormal(0.0, 1.0, 200)
    g = rng.choice(200, rows, p=size / size.sum())
    male = (rng.random(rows) < 0.5).astype(np.int64)
    x = np.round(rng.standard_normal(rows), 6)
    eta = -0.5 + 0.3 * male + 0.8 * x + rng.normal(0.0, 0.5, 200)[g]
    y = (rng.random(rows) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int8)
    names = np.array([f"g{i:03d}" for i in range(200)])
    df = pl.DataFrame({"g": names[g], "sex": np.array(["F", "M"])[male], "x": x, "y": y})
    for i, part in enumerate(np.array_split(np.arange(rows), files)):
        df[int(part[0]) : int(part[-1]) + 1].write_parquet(folder / f"part-{i:03d}.parquet")
    done.touch()
    return folder


def run_glmer(rscript: str, csv: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        script, out = Path(tmp) / "bench.R", Path(tmp) / "out.json"
        script.write_text(R_SCRIPT)
        subprocess.run([rscript, str(script), str(csv), str(out)], check=True)
        res: dict[str, Any] = json.loads(out.read_text())
    return res


def run_pooljob(data: str) -> tuple[float, Any]:
    t = time.perf_counter()
    fit = pooljob.fit(FORMULA, data, family="binomial")
    return time.perf_counter() - t, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big", type=int, default=10_000_000, help="rows for pooljob alone; 0: skip")
    ap.add_argument("--repeats", type=int, default=3, help="pooljob runs (after a warm-up)")
    ap.add_argument("--r-repeats", type=int, default=1, help="glmer runs (one Rscript each)")
    ap.add_argument("--seed", type=int, default=20261130)
    ap.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    args = ap.parse_args()

    folder = generate(args.data / f"glmm_rows_{args.rows}", args.rows, args.seed)
    data = str(folder / "*.parquet")
    rscript = rscript_with_lme4("glmer")
    csv = folder / "rows.csv"
    if rscript and not csv.exists():
        pl.read_parquet(data).write_csv(csv)
    _, fit = run_pooljob(data)  # warm-up
    ours: list[float] = []
    theirs: list[dict[str, Any]] = []
    for i in range(max(args.repeats, args.r_repeats if rscript else 0)):
        if i < args.repeats:
            seconds, fit = run_pooljob(data)
            ours.append(seconds)
            print(f"pooljob  {args.rows:>11,} rows  {seconds:8.2f} s")
        if rscript and i < args.r_repeats:
            theirs.append(run_glmer(rscript, csv))
            print(f"glmer    {args.rows:>11,} rows  {theirs[-1]['time']:8.2f} s")
    ok = True
    print(f"pooljob median {statistics.median(ours):.2f} s ({', '.join(f'{s:.2f}' for s in ours)})")
    print(f"  nobs {fit.nobs:,}, loglik {fit.loglik:.6f}")
    if theirs:
        ref = theirs[-1]
        median = statistics.median(r["time"] for r in theirs)
        times = ", ".join(f"{r['time']:.2f}" for r in theirs)
        print(f"glmer median {median:.2f} s ({times}); lme4 {ref['lme4_version']}")
        print(f"ratio glmer / pooljob: {median / statistics.median(ours):.1f}x")
        coef = {r["term"]: r["estimate"] for r in fit.coefficients.to_dicts()}
        ours_fix = {"(Intercept)": coef["(Intercept)"], "sexM": coef["sexM"], "x": coef["x"]}
        worst = max(abs(ours_fix[k] - v) / max(abs(v), 1e-3) for k, v in ref["fixef"].items())
        var = float(fit.components["variance"][0])
        dvar = abs(var - ref["variance"]) / ref["variance"]
        dll = fit.loglik - ref["loglik"]
        print(
            f"agreement: loglik pooljob - glmer {dll:.3e}; fixed effects {worst:.1e}, "
            f"variance {dvar:.1e} (relative)"
        )
        if ref["warnings"]:
            print(f"  glmer warned: {ref['warnings']}")
        if dll < -1e-6 * abs(ref["loglik"]) or worst > 2e-3 or dvar > 2e-3:
            print("CHECK FAILED")
            ok = False
    if args.big:
        big = generate(args.data / f"glmm_rows_{args.big}", args.big, args.seed)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, FORMULA, str(big / "*.parquet")],
            check=True,
            capture_output=True,
            text=True,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"pooljob alone {args.big:,} rows: {res['seconds']:.1f} s, peak RSS "
            f"{res['peak_mib']:,.0f} MiB, converged {res['converged']}"
        )
        ok = ok and bool(res["converged"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
