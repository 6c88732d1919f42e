"""Benchmark: `pooljob run` end to end against one bare DuckDB aggregation.

Generates N rows (default 10M, 10k groups) as Parquet with a seed, then times,
in the same run and alternating:

* reference: one DuckDB query over the same file, ``count``, ``avg`` and
  ``var_pop`` by group, fetched as Arrow (the speed of the scan);
* pooljob: the whole job: config, scan, fit, Parquet outputs, manifest,
  atomic publish.

Both are timed in-process (imports excluded) and as fresh processes (what
cron sees: interpreter start, imports).  Prints medians and ratios.

    python benchmarks/bench_oneway.py --rows 10_000_000 --groups 10_000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from pooljob.job.config import load_config
from pooljob.job.run import run

GENERATE = """
copy (
    select
        g,
        100.0 + effect * 5.0 + sqrt(-2.0 * ln(u1)) * cos(2.0 * pi() * u2) * 20.0 as y
    from (
        select
            (hash(i, $seed) % $groups)::integer as g,
            ((hash(hash(i, $seed) % $groups, $seed) % 1000003) / 1000003.0 - 0.5) * 3.4 as effect,
            ((hash(i, $seed + 1) % 1000000007) + 1) / 1000000008.0 as u1,
            ((hash(i, $seed + 2) % 1000000007) + 1) / 1000000008.0 as u2
        from range($rows) as t(i)
    )
) to '{path}' (format parquet, row_group_size 1000000)
"""

REFERENCE = (
    "select g, count(*) as n, avg(y) as mean, var_pop(y) as var "
    "from read_parquet('{path}') group by g"
)


def generate(path: Path, rows: int, groups: int, seed: int) -> None:
    if path.exists():
        return
    con = duckdb.connect()
    con.execute(
        GENERATE.format(path=str(path).replace("'", "''")),
        {"seed": seed, "groups": groups, "rows": rows},
    )
    con.close()


def reference_once(path: Path) -> float:
    t = time.perf_counter()
    con = duckdb.connect()
    con.sql(REFERENCE.format(path=str(path).replace("'", "''"))).to_arrow_table()
    con.close()
    return time.perf_counter() - t


def pooljob_once(config: Path) -> float:
    t = time.perf_counter()
    run(load_config(config))
    return time.perf_counter() - t


def process_once(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--groups", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=str(Path(__file__).parent / "data"))
    args = ap.parse_args()

    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    path = data / f"oneway_{args.rows}_{args.groups}_{args.seed}.parquet"
    t = time.perf_counter()
    generate(path, args.rows, args.groups, args.seed)
    print(f"data: {path} ({path.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - t:.1f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(
            f'[source]\npath = "{path}"\n'
            '[model]\nformula = "y ~ 1 + (1 | g)"\n'
            f'[output]\npath = "{Path(tmp) / "out"}"\nkeep_runs = 2\nincremental = false\n'
        )
        reference_once(path)  # warm the file cache for both
        pooljob_once(config)
        ref, job = [], []
        for _ in range(args.repeats):
            ref.append(reference_once(path))
            job.append(pooljob_once(config))
        ref_cmd = [
            sys.executable,
            "-c",
            "import duckdb; duckdb.connect().sql("
            f"{REFERENCE.format(path=str(path).replace(chr(39), chr(39) * 2))!r}).to_arrow_table()",
        ]
        job_cmd = [sys.executable, "-m", "pooljob.job.cli", "--quiet", "run", str(config)]
        ref_p, job_p = [], []
        for _ in range(args.repeats):
            ref_p.append(process_once(ref_cmd))
            job_p.append(process_once(job_cmd))

    def row(name: str, a: list[float], b: list[float]) -> str:
        ma, mb = statistics.median(a), statistics.median(b)
        return f"| {name} | {mb:.3f} | {ma:.3f} | {ma / mb:.2f} |"

    print(f"\n{args.rows:,} rows, {args.groups:,} groups, {args.repeats} repeats, medians (s)")
    print("| timing | bare DuckDB aggregation | pooljob run | ratio |")
    print("|---|---|---|---|")
    print(row("in-process", job, ref))
    print(row("fresh process (python + imports)", job_p, ref_p))


if __name__ == "__main__":
    main()
