"""Benchmark: an incremental refresh after 1 new partition of 100, against a full run.

Generates N rows (default 20M, 10k groups) with a seed as P hive partitions
``day=0 … day=P-1`` (every group in every partition: the store holds
P × groups per-file cells, its largest case for these data), plus one more
partition ``day=P`` of N/P rows, held back.  Then times, in process
(imports excluded), alternating:

* one-pass: ``[output] incremental = false``, one scan of every file, no
  store (pooljob before incremental refresh);
* full: ``pooljob run --full``, every file scanned per file, the store
  rebuilt and saved;
* refresh: the store as a full run over P partitions left it, then
  partition ``day=P`` added and ``pooljob run``: it scans that one file,
  merges it with the stored statistics, refits and saves the store.

Prints medians (s) and the ratio refresh / full, and checks that the
refresh's fit equals the full run's.

    python benchmarks/bench_incremental.py --rows 20_000_000 --partitions 100
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from pooljob.job.config import load_config
from pooljob.job.run import RunOutcome, run

GENERATE = """
copy (
    select
        day,
        g,
        100.0 + effect * 5.0 + sqrt(-2.0 * ln(u1)) * cos(2.0 * pi() * u2) * 20.0 as y
    from (
        select
            (i // $per_day)::integer as day,
            (hash(i, $seed) % $groups)::integer as g,
            ((hash(hash(i, $seed) % $groups, $seed) % 1000003) / 1000003.0 - 0.5) * 3.4 as effect,
            ((hash(i, $seed + 1) % 1000000007) + 1) / 1000000008.0 as u1,
            ((hash(i, $seed + 2) % 1000000007) + 1) / 1000000008.0 as u2
        from range($start, $stop) as t(i)
    )
) to '{path}' (format parquet, partition_by (day), overwrite_or_ignore true)
"""


def generate(folder: Path, start: int, stop: int, per_day: int, groups: int, seed: int) -> None:
    con = duckdb.connect()
    con.execute(
        GENERATE.format(path=str(folder).replace("'", "''")),
        {"start": start, "stop": stop, "per_day": per_day, "groups": groups, "seed": seed},
    )
    con.close()


def timed(config: Path, full: bool = False) -> tuple[float, RunOutcome]:
    t = time.perf_counter()
    outcome = run(load_config(config), full=full)
    return time.perf_counter() - t, outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--partitions", type=int, default=100)
    ap.add_argument("--groups", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", default=str(Path(__file__).parent / "data"))
    args = ap.parse_args()

    per_day = args.rows // args.partitions
    name = f"incremental_{args.rows}_{args.partitions}_{args.groups}_{args.seed}"
    data = Path(args.data_dir) / name
    held = Path(args.data_dir) / f"{name}_extra"
    data.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if not data.exists():
        generate(data, 0, per_day * args.partitions, per_day, args.groups, args.seed)
    if not held.exists():
        stop = per_day * (args.partitions + 1)
        generate(held, per_day * args.partitions, stop, per_day, args.groups, args.seed)
    new_part = data / f"day={args.partitions}"
    if new_part.exists():
        shutil.rmtree(new_part)
    size = sum(p.stat().st_size for p in data.rglob("*.parquet"))
    print(f"data: {data} ({size / 1e6:.0f} MB, {time.perf_counter() - t:.1f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        config = out / "job.toml"
        body = (
            f'[source]\npath = "{data}/*/*.parquet"\n'
            '[model]\nformula = "y ~ 1 + (1 | g)"\n'
            f'[output]\npath = "{out / "out"}"\nkeep_runs = 2\n'
        )
        config.write_text(body)
        one_pass = out / "one_pass.toml"
        one_pass.write_text(
            body.replace('"\nkeep_runs', '_one_pass"\nincremental = false\nkeep_runs')
        )

        timed(one_pass)  # warm the file cache
        timed(config, full=True)  # the store over P partitions
        saved = out / "state_saved"
        shutil.copytree(out / "out" / "state", saved)
        store_mb = sum(p.stat().st_size for p in saved.iterdir()) / 1e6
        print(f"store over {args.partitions} partitions: {store_mb:.1f} MB")
        shutil.copytree(held / f"day={args.partitions}", new_part)  # 1 new partition

        plain_t, full_t, refresh_t = [], [], []
        for _ in range(args.repeats):
            plain_t.append(timed(one_pass)[0])
            seconds, full = timed(config, full=True)
            full_t.append(seconds)
            shutil.rmtree(out / "out" / "state")  # back to the store of P partitions
            shutil.copytree(saved, out / "out" / "state")
            seconds, refresh = timed(config)
            refresh_t.append(seconds)
            assert refresh.manifest["refresh"]["files_scanned"] == 1, refresh.manifest["refresh"]
            gap = abs(refresh.result.objective - full.result.objective)
            assert gap <= 1e-10 * abs(full.result.objective), gap
        shutil.rmtree(new_part)

    m_plain, m_full, m_refresh = (statistics.median(x) for x in (plain_t, full_t, refresh_t))
    print(
        f"\n{args.rows:,} rows in {args.partitions} partitions, {args.groups:,} groups, "
        f"+1 partition of {per_day:,} rows; {args.repeats} repeats, medians (s), in process"
    )
    print("| run | seconds | / full |")
    print("|---|---|---|")
    rows = [
        ("one-pass scan, no store (`incremental = false`)", m_plain),
        ("full (`--full`: per-file scan, store rebuilt)", m_full),
        (f"refresh: 1 new partition of {args.partitions + 1}", m_refresh),
    ]
    for label, seconds in rows:
        print(f"| {label} | {seconds:.3f} | {seconds / m_full:.2f} |")
    print(f"stages of the last refresh: {_stages(refresh)}")
    print(f"stages of the last full run: {_stages(full)}")


def _stages(outcome: RunOutcome) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in outcome.manifest["timings_seconds"].items())


if __name__ == "__main__":
    main()
