"""Benchmark: pooljob's exact solver on crossed random intercepts with many levels.

Two cases (issue 13 §1, docs/crossed-at-scale.md):

* ``insteval``: lme4's ``InstEval`` (73,421 rows; 2,972 students ``s``,
  1,128 lecturers ``d``, 14 departments), ``y ~ service + (1 | s) + (1 | d)
  + (1 | dept)``.  The data are exported from R (``lme4::InstEval``) with
  ``Rscript`` into ``--data-dir`` (not committed), or read from
  ``--insteval PATH`` (a CSV with the columns s, d, dept, service (0/1), y).
  ``--lme4`` also times ``lmer`` on the same file (median of
  ``--r-repeats``, the ``lmer`` call alone).
* ``big``: 1,000,000 rows, ``y ~ 1 + (1 | u) + (1 | it)`` with 20,000 users
  and 5,000 items, generated with numpy's ``default_rng(seed)``: ``u`` and
  ``it`` uniform over their levels (every level drawn at least once, as in
  bench_crossed.py), ``y = 3 + a[u] + b[it] + e`` with ``a ~ N(0, 0.8²)``,
  ``b ~ N(0, 0.5²)``, ``e ~ N(0, 1)``, rounded to 6 decimals; written as
  Parquet under ``--data-dir``.  The exact solver before issue 13 §1 (L-BFGS-B
  from lme4's start, 28-29 evaluations, about 236 s) gives the REML
  criterion 2927762.128288 on these data (seed 1); the issue's 1815427.953981
  was for data of its own generator.

Each case times ``pooljob.fit`` end to end (scan, statistics, fit, tables)
in-process, median of ``--repeats`` runs after one warm-up (``--repeats 1``:
one run, no warm-up), and prints the REML criterion to 6 decimals, the
evaluations, pooljob's own stage timings, the process's CPU time (on a
machine shared with other work, the wall time measures the others too) and
its peak resident memory.

    python benchmarks/bench_crossed_exact.py insteval --lme4
    python benchmarks/bench_crossed_exact.py big --repeats 1
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path

# isort: off
import pooljob  # first: it pins BLAS to one thread before numpy loads it

# isort: on
import numpy as np
import polars as pl

INSTEVAL_FORMULA = "y ~ service + (1 | s) + (1 | d) + (1 | dept)"
BIG_FORMULA = "y ~ 1 + (1 | u) + (1 | it)"

EXPORT_R = r"""
a <- commandArgs(trailingOnly = TRUE)
d <- lme4::InstEval
write.csv(data.frame(s = as.integer(as.character(d$s)), d = as.integer(as.character(d$d)),
                     dept = as.integer(as.character(d$dept)),
                     service = as.integer(d$service) - 1L, y = d$y),
          a[1], row.names = FALSE)
"""

LMER_R = r"""
suppressPackageStartupMessages(library(lme4))
a <- commandArgs(trailingOnly = TRUE)
df <- read.csv(a[1])
for (col in c("s", "d", "dept")) df[[col]] <- factor(df[[col]])
for (i in seq_len(as.integer(a[2]))) {
  t <- system.time(m <- lmer(y ~ service + (1 | s) + (1 | d) + (1 | dept), data = df))
  cat(sprintf("lmer %.3f s, REML criterion %.6f\n", t[["elapsed"]], REMLcrit(m)))
}
"""


def insteval_csv(data: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    path = data / "insteval.csv"
    if not path.exists():
        rscript = shutil.which("Rscript")
        if rscript is None:
            raise SystemExit("insteval: Rscript not found; pass --insteval PATH")
        script = data / "export_insteval.R"
        script.write_text(EXPORT_R)
        subprocess.run([rscript, str(script), str(path)], check=True)
    return path


def big_parquet(data: Path, rows: int, users: int, items: int, seed: int) -> Path:
    path = data / f"crossed_big_{rows}_{users}_{items}_{seed}.parquet"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    u = rng.permutation(np.concatenate([np.arange(users), rng.integers(0, users, rows - users)]))
    it = rng.permutation(np.concatenate([np.arange(items), rng.integers(0, items, rows - items)]))
    y = 3.0 + rng.normal(0, 0.8, users)[u] + rng.normal(0, 0.5, items)[it] + rng.normal(0, 1, rows)
    pl.DataFrame(
        {"u": u.astype(np.int32), "it": it.astype(np.int32), "y": np.round(y, 6)}
    ).write_parquet(path)
    return path


def run(formula: str, data: Path, repeats: int) -> None:
    times, cpu = [], []
    fit = None
    for i in range(repeats + (1 if repeats > 1 else 0)):
        t, c = time.perf_counter(), time.process_time()
        fit = pooljob.fit(formula, str(data))
        if repeats == 1 or i > 0:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    assert fit is not None
    opt = fit.optimizer
    print(
        f"pooljob: median {statistics.median(times):.2f} s over {len(times)} runs "
        f"({', '.join(f'{x:.2f}' for x in times)}); REML criterion {fit.objective:.6f}; "
        f"{opt['evaluations']} evaluations; converged {opt['converged']}"
    )
    print(
        f"  CPU time of the process: median {statistics.median(cpu):.2f} s "
        f"({', '.join(f'{x:.2f}' for x in cpu)}; all threads: above the wall time when a "
        "second BLAS thread ran, pooljob/model/blas.py)"
    )
    print("  last run: " + ", ".join(f"{k} {v:.2f} s" for k, v in fit.timings.items()))
    print("  sd: " + ", ".join(f"{r['grouping']} {r['sd']:.6f}" for r in fit.components.to_dicts()))
    print(f"  optimizer: {opt['message']}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"  peak resident memory of this process: {peak:.2f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=["insteval", "big"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--insteval", help="CSV of lme4::InstEval (s, d, dept, service, y)")
    ap.add_argument("--lme4", action="store_true", help="also time lmer (insteval)")
    ap.add_argument("--r-repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", default=str(Path(__file__).parent / "data"))
    args = ap.parse_args()
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    if args.case == "insteval":
        path = insteval_csv(data, args.insteval)
        print(f"model: {INSTEVAL_FORMULA}, REML; {path}")
        run(INSTEVAL_FORMULA, path, args.repeats)
        if args.lme4:
            script = data / "lmer_insteval.R"
            script.write_text(LMER_R)
            rscript = shutil.which("Rscript") or "Rscript"
            subprocess.run([rscript, str(script), str(path), str(args.r_repeats)], check=True)
    else:
        path = big_parquet(data, args.rows, args.users, args.items, args.seed)
        print(
            f"model: {BIG_FORMULA}, REML; {args.rows:,} rows, {args.users:,} users x "
            f"{args.items:,} items (seed {args.seed})"
        )
        run(BIG_FORMULA, path, args.repeats)


if __name__ == "__main__":
    main()
