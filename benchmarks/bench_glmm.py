"""Benchmark: a binomial MRP model on a poll, pooljob against glmer on the same cells.

Generates (seeded numpy) a non-representative poll of N rows as Parquet
files under ``benchmarks/data/`` — 50 states of uneven size, ~600 counties
within them (the county of a respondent drawn with lognormal weights), six
age bands, sex, five education levels and four races, young men and the
college-educated over-represented — with a 0/1 response::

    logit P(vote) = -0.3 + 0.25 [sex = M] + a[state] + c[county] + g[age] + e[educ] + r[race],
    a ~ N(0, 0.3²), c ~ N(0, 0.25²), g, e, r fixed draws (sd 0.4, 0.3, 0.5),

about 110,000 distinct cells (county × age × sex × educ × race) at 3M rows.
The rows are aggregated to cells once (DuckDB: ``yes``, ``no`` per cell,
written as CSV), then it times

* pooljob: ``pooljob.fit("vote ~ sex + (1 | state) + (1 | county) + (1 | age)
  + (1 | educ) + (1 | race)", "<dir>/*.parquet", family="binomial")``
  in-process from the rows (the DuckDB scan to per-cell counts, the Laplace
  fit, the output tables), median of ``--repeats`` runs after one warm-up;
* glmer: ``glmer(cbind(yes, no) ~ sex + (1 | state) + (1 | county) + ...,
  family = binomial)`` (default control, nAGQ = 1) on the cell table through
  ``Rscript``, ``system.time`` around the ``glmer`` call only (reading the CSV
  and making factors excluded), one fresh Rscript per run, median of
  ``--r-repeats`` runs; skipped with a message when ``Rscript`` or lme4 is
  not available.  (glmer on the 0/1 rows themselves is the same model with
  ~30× more observations, and much slower still.)

The two are run alternately (pooljob, glmer, pooljob, glmer, ...).  It
prints both medians and their ratio, and checks correctness:

* pooljob is also fitted on the cell CSV with ``cbind(yes, no)``, the input
  glmer gets; its log-likelihood must be no worse than glmer's ``logLik``
  (1e-6 relative slack), and the fixed effects and variance components must
  agree with glmer's within 2e-3 relative (glmer's default PIRLS tolerance
  leaves its estimates up to ~1e-3 off the Laplace optimum: see
  tests/test_lme4_glmm.py);
* the fit from the rows and the fit from the cells are the same model: the
  log-likelihoods differ by exactly Σ_cells log C(trials, yes) (1e-9
  relative), the estimates agree to 1e-6.

Exit status 1 when a check fails.

    python benchmarks/bench_glmm.py                      # 3M rows, ~110k cells
    python benchmarks/bench_glmm.py --rows 300_000 --r-repeats 1
    python benchmarks/bench_glmm.py --only-pooljob
"""

from __future__ import annotations

import argparse
import json
import math
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
import duckdb
import numpy as np
import polars as pl
from rcheck import rscript_with_lme4
from scipy.special import gammaln

RANDOM = "(1 | state) + (1 | county) + (1 | age) + (1 | educ) + (1 | race)"
FORMULA = f"vote ~ sex + {RANDOM}"
CELL_FORMULA = f"cbind(yes, no) ~ sex + {RANDOM}"
KEYS = ["state", "county", "age", "sex", "educ", "race"]
AGES = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
EDUC = ["no_hs", "hs", "some_college", "college", "postgrad"]
RACES = ["white", "black", "hispanic", "other"]

R_SCRIPT = r"""
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
a <- commandArgs(trailingOnly = TRUE)
df <- read.csv(a[1])
for (col in c("state", "county", "age", "sex", "educ", "race")) df[[col]] <- factor(df[[col]])
warns <- character(0)
elapsed <- system.time(withCallingHandlers(
  m <- glmer(cbind(yes, no) ~ sex + (1 | state) + (1 | county) + (1 | age) + (1 | educ) +
               (1 | race), data = df, family = binomial),
  warning = function(w) {
    warns <<- unique(c(warns, conditionMessage(w)))
    invokeRestart("muffleWarning")
  }
))[["elapsed"]]
vc <- as.data.frame(VarCorr(m))
writeLines(toJSON(list(
  time = elapsed, loglik = as.numeric(logLik(m)), nobs = nobs(m),
  evaluations = m@optinfo$feval, warnings = I(warns),
  components = data.frame(grouping = vc$grp, variance = vc$vcov),
  fixef = as.list(fixef(m)), lme4_version = as.character(packageVersion("lme4")),
  r_version = paste(R.version$major, R.version$minor, sep = ".")
), auto_unbox = TRUE, digits = NA), a[2])
"""


def generate(folder: Path, rows: int, counties: int, files: int, seed: int) -> Path:
    """Write the poll as ``files`` Parquet files under ``folder`` (kept between runs)."""
    done = folder / "_done"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # states of uneven size; counties in proportion to population (at least 2)
    size = rng.lognormal(0.0, 1.0, 50)
    size /= size.sum()
    per_state = np.maximum(2, np.round(size * counties).astype(np.int64))
    county_state = np.repeat(np.arange(50), per_state)
    within = np.concatenate([np.arange(k) for k in per_state])
    weight = rng.lognormal(0.0, 1.5, len(county_state))
    weight *= size[county_state] / np.bincount(county_state, weight)[county_state]
    county = rng.choice(len(county_state), rows, p=weight / weight.sum())
    state = county_state[county]
    # who answers: young, male and educated respondents over-represented
    age = rng.choice(6, rows, p=[0.30, 0.25, 0.18, 0.12, 0.09, 0.06])
    male = (rng.random(rows) < 0.7).astype(np.int64)
    educ = rng.choice(5, rows, p=[0.05, 0.15, 0.25, 0.35, 0.20])
    race = rng.choice(4, rows, p=[0.72, 0.12, 0.10, 0.06])
    eta = (
        -0.3
        + 0.25 * male
        + rng.normal(0, 0.3, 50)[state]
        + rng.normal(0, 0.25, len(county_state))[county]
        + rng.normal(0, 0.4, 6)[age]
        + rng.normal(0, 0.3, 5)[educ]
        + rng.normal(0, 0.5, 4)[race]
    )
    vote = (rng.random(rows) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int8)
    state_names = np.array([f"S{s:02d}" for s in range(50)])
    county_names = np.array(
        [f"S{s:02d}-C{c:03d}" for s, c in zip(county_state, within, strict=True)]
    )
    df = pl.DataFrame(
        {
            "state": state_names[state],
            "county": county_names[county],
            "age": np.array(AGES)[age],
            "sex": np.array(["F", "M"])[male],
            "educ": np.array(EDUC)[educ],
            "race": np.array(RACES)[race],
            "vote": vote,
        }
    )
    for i, part in enumerate(np.array_split(np.arange(rows), files)):
        df[int(part[0]) : int(part[-1]) + 1].write_parquet(folder / f"part-{i:03d}.parquet")
    done.touch()
    return folder


def cell_table(folder: Path, csv: Path) -> pl.DataFrame:
    """Aggregate the rows to cells (yes, no), write them as CSV once, return them."""
    if not csv.exists():
        keys = ", ".join(KEYS)
        cells = duckdb.sql(
            f"select {keys}, sum(vote)::bigint as yes, (count(*) - sum(vote))::bigint as no "
            f"from read_parquet('{folder}/*.parquet') group by all order by {keys}"
        ).pl()
        cells.write_csv(csv)
    return pl.read_csv(csv)


def run_glmer(rscript: str, csv: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        script, out = Path(tmp) / "bench.R", Path(tmp) / "out.json"
        script.write_text(R_SCRIPT)
        t = time.perf_counter()
        subprocess.run([rscript, str(script), str(csv), str(out)], check=True)
        wall = time.perf_counter() - t
        res: dict[str, Any] = json.loads(out.read_text())
    res["wall"] = wall
    return res


def run_pooljob(data: Any, formula: str) -> tuple[float, Any]:

    t = time.perf_counter()
    fit = pooljob.fit(formula, data, family="binomial")
    return time.perf_counter() - t, fit


def summary(fit: Any) -> dict[str, Any]:
    return {
        "loglik": fit.loglik,
        "nobs": fit.nobs,
        "fixef": {r["term"]: r["estimate"] for r in fit.coefficients.to_dicts()},
        "variance": {r["grouping"]: r["variance"] for r in fit.components.to_dicts()},
    }


def worst_relative(a: dict[str, float], b: dict[str, float]) -> tuple[float, str]:
    """Largest |a - b| / max(|b|, 1e-3) over the keys of b, and its key."""
    return max((abs(a[k] - b[k]) / max(abs(b[k]), 1e-3), k) for k in b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--counties", type=int, default=600, help="counties (about) over 50 states")
    ap.add_argument("--files", type=int, default=4, help="Parquet files the rows are split into")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeats", type=int, default=5, help="pooljob runs")
    ap.add_argument("--r-repeats", type=int, default=3, help="glmer runs (one Rscript each)")
    ap.add_argument("--only-pooljob", action="store_true", help="time pooljob only")
    ap.add_argument("--data-dir", default=str(Path(__file__).parent / "data"))
    args = ap.parse_args()

    data = Path(args.data_dir)
    stem = f"glmm_{args.rows}_{args.counties}_{args.seed}"
    t = time.perf_counter()
    folder = generate(data / stem, args.rows, args.counties, args.files, args.seed)
    csv = data / f"{stem}_cells.csv"
    cells = cell_table(folder, csv)
    size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    print(
        f"data: {folder}/*.parquet ({size / 1e6:.1f} MB), {csv.name} "
        f"({csv.stat().st_size / 1e6:.1f} MB), {time.perf_counter() - t:.1f} s"
    )
    groups = {k: cells[k].n_unique() for k in KEYS}
    print(
        f"model: {FORMULA} (binomial, Laplace); {args.rows:,} rows, {len(cells):,} cells; "
        + ", ".join(f"{k} {v:,}" for k, v in groups.items())
    )
    glob = str(folder / "*.parquet")
    rscript = None if args.only_pooljob else rscript_with_lme4("glmer")

    run_pooljob(glob, FORMULA)  # warm-up (imports, file cache)
    times: list[float] = []
    r_runs: list[dict[str, Any]] = []
    fit = None
    for i in range(max(args.repeats, args.r_repeats if rscript else 0)):
        if i < args.repeats:
            elapsed, fit = run_pooljob(glob, FORMULA)
            times.append(elapsed)
            print(f"  pooljob run {i + 1}: {elapsed:.3f} s", flush=True)
        if rscript is not None and i < args.r_repeats:
            r_runs.append(run_glmer(rscript, csv))
            print(
                f"  glmer run {i + 1}: {r_runs[-1]['time']:.3f} s "
                f"(Rscript wall {r_runs[-1]['wall']:.1f} s)",
                flush=True,
            )
    assert fit is not None
    rows = summary(fit)
    cell_time, cell_fit = run_pooljob(str(csv), CELL_FORMULA)
    cellwise = summary(cell_fit)
    job_median = statistics.median(times)
    print(
        f"pooljob: median {job_median:.3f} s over {len(times)} runs "
        f"({', '.join(f'{x:.2f}' for x in times)}), from the rows; loglik {rows['loglik']:.6f}, "
        f"nobs {rows['nobs']:,}"
    )
    print(
        f"  from the cell CSV (cbind): {cell_time:.3f} s, loglik {cellwise['loglik']:.6f}, "
        f"nobs {cellwise['nobs']:,}"
    )
    print("  fixef: " + ", ".join(f"{k} {v:.6f}" for k, v in cellwise["fixef"].items()))
    print("  var:   " + ", ".join(f"{k} {v:.6f}" for k, v in cellwise["variance"].items()))

    failed = False
    # rows and cells: the same model, up to the log-binomial-coefficient constant
    yes, no = cells["yes"].to_numpy().astype(float), cells["no"].to_numpy().astype(float)
    const = float(np.sum(gammaln(yes + no + 1.0) - gammaln(yes + 1.0) - gammaln(no + 1.0)))
    gap = cellwise["loglik"] - (rows["loglik"] + const)
    fe, fe_key = worst_relative(rows["fixef"], cellwise["fixef"])
    vc, vc_key = worst_relative(rows["variance"], cellwise["variance"])
    print(
        f"rows vs cells: loglik(cells) - loglik(rows) - Σ log C(trials, yes) = {gap:+.3e}; "
        f"fixef {fe:.1e} ({fe_key}), variances {vc:.1e} ({vc_key}) relative"
    )
    if abs(gap) > 1e-9 * abs(cellwise["loglik"]) or fe > 1e-6 or vc > 1e-6:
        print("FAIL: the fits from the rows and from the cells differ")
        failed = True

    if r_runs:
        r = r_runs[-1]
        r_times = [float(x["time"]) for x in r_runs]
        r_median = statistics.median(r_times)
        print(
            f"glmer (lme4 {r['lme4_version']}, R {r['r_version']}): median {r_median:.3f} s over "
            f"{len(r_runs)} runs ({', '.join(f'{x:.2f}' for x in r_times)}), "
            f"loglik {r['loglik']:.6f}, nobs {r['nobs']:,}, {r['evaluations']} evaluations"
        )
        r_fixef = {k: float(v) for k, v in r["fixef"].items()}
        r_var = {c["grouping"]: float(c["variance"]) for c in r["components"]}
        print("  fixef: " + ", ".join(f"{k} {v:.6f}" for k, v in r_fixef.items()))
        print("  var:   " + ", ".join(f"{k} {v:.6f}" for k, v in r_var.items()))
        for w in r["warnings"]:
            print(f"  glmer warning: {w}")
        diff = cellwise["loglik"] - r["loglik"]
        fe, fe_key = worst_relative(cellwise["fixef"], r_fixef)
        vc, vc_key = worst_relative(cellwise["variance"], r_var)
        print(f"glmer / pooljob time: {r_median / job_median:.1f}x")
        print(
            f"loglik pooljob - glmer (same cells, cbind): {diff:+.3e} "
            f"({abs(diff) / abs(r['loglik']):.1e} relative); fixef {fe:.1e} ({fe_key}), "
            f"variances {vc:.1e} ({vc_key}) relative"
        )
        if diff < -1e-6 * abs(r["loglik"]) or not math.isfinite(diff):
            print("FAIL: pooljob's log-likelihood is worse than glmer's")
            failed = True
        if fe > 2e-3 or vc > 2e-3:
            print("FAIL: estimates differ from glmer's by more than 2e-3 relative")
            failed = True
    if failed:
        sys.exit(1)
    print("checks passed")


if __name__ == "__main__":
    main()
