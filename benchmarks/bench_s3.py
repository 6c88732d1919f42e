"""Benchmark: a run from S3 (moto on 127.0.0.1) against the same run from local files.

Writes P hive partitions ``day=0 … day=P-1`` of N/P rows each, with the
model's columns (region, store, sales) and an unused wide column
``payload`` (W random bytes as hex per row), locally and to a bucket on a
moto server started here (needs ``moto[server]``).  Then times, in
process, alternating, R repeats:

* local: ``[source] path`` on the local files, local output, no store;
* s3: the same on ``s3://`` (pyarrow's S3 client), S3 output, no store;
* download: every object's bytes fetched (what a reader that cannot push
  the projection down would transfer) — the s3 run reads only the model's
  columns, so it should take well under this when ``payload`` dominates;
* scan: the model's columns of every object read through DuckDB (the
  run's scan alone, no listing, stamps or publishing);
* refresh: an S3 run with the store, after one more partition is added.

Prints medians (s) and checks that the s3 run equals the local one (to
1e-9: DuckDB's threads split an Arrow scan otherwise than a file scan, so
sums are added in another order).

    python benchmarks/bench_s3.py --rows 400_000 --partitions 8 --width 200
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.fs as pfs

from pooljob.job.config import load_config
from pooljob.job.run import run
from pooljob.scan.source import open_config_source


def _write(path: Path, rows: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    store = rng.integers(0, 500, rows)
    payload = [os.urandom(width // 2).hex() for _ in range(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "region": np.array(["east", "west", "north", "south"])[store % 4],
            "store": store,
            "sales": 100 + store % 17 + rng.normal(0, 10, rows),
            "payload": payload,
        }
    ).write_parquet(path)


def _config(folder: Path, name: str, source: str, out: str, incremental: bool) -> Path:
    cfg = folder / f"{name}.toml"
    cfg.write_text(
        f"[source]\npath = {json.dumps(source)}\n[model]\n"
        'formula = "sales ~ 1 + (1 | region/store)"\n'
        f"[output]\npath = {json.dumps(out)}\nincremental = {str(incremental).lower()}\n"
    )
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ALLOW_HTTP="true",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
    )
    fs = pfs.S3FileSystem(
        access_key="bench",
        secret_key="bench",
        region="us-east-1",
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        allow_bucket_creation=True,
    )
    fs.create_dir("bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            per = args.rows // args.partitions
            for day in range(args.partitions):
                _write(folder / "data" / f"day={day}" / "part.parquet", per, args.width, day)
            new = folder / "extra.parquet"  # held back, added for the refresh
            _write(new, per, args.width, args.partitions)
            total = 0
            for day in range(args.partitions):
                data = (folder / "data" / f"day={day}" / "part.parquet").read_bytes()
                total += len(data)
                with fs.open_output_stream(f"bench/in/day={day}/part.parquet") as out:
                    out.write(data)
            local_glob = str(folder / "data" / "**" / "*.parquet")
            local = _config(folder, "local", local_glob, str(folder / "out"), False)
            remote = _config(folder, "s3", "s3://bench/in/**/*.parquet", "s3://bench/o1", False)
            refresh = _config(folder, "r", "s3://bench/in/**/*.parquet", "s3://bench/o2", True)
            run(load_config(refresh))  # the store, as a run over P partitions leaves it
            times: dict[str, list[float]] = {
                "local": [],
                "s3": [],
                "download": [],
                "scan": [],
                "refresh": [],
            }
            a = b = None
            for _ in range(args.repeats):
                t = time.perf_counter()
                a = run(load_config(local))
                times["local"].append(time.perf_counter() - t)
                t = time.perf_counter()
                b = run(load_config(remote))
                times["s3"].append(time.perf_counter() - t)
                t = time.perf_counter()
                for day in range(args.partitions):
                    with fs.open_input_stream(f"bench/in/day={day}/part.parquet") as stream:
                        stream.read()
                times["download"].append(time.perf_counter() - t)
                t = time.perf_counter()
                with open_config_source(path="s3://bench/in/**/*.parquet") as source:
                    source.arrow("select count(region), count(store), sum(sales) from source")
                times["scan"].append(time.perf_counter() - t)
            assert a is not None and b is not None
            assert a.result.rows == b.result.rows
            # equal up to the order DuckDB's threads add in (the Arrow scan splits differently)
            gap = (a.result.estimates["estimate"] - b.result.estimates["estimate"]).abs().max()
            assert isinstance(gap, float) and gap < 1e-9, gap
            for i in range(args.repeats):
                key = f"bench/in/day={args.partitions + i}/part.parquet"
                with fs.open_output_stream(key) as out:
                    out.write(new.read_bytes())
                t = time.perf_counter()
                outcome = run(load_config(refresh))
                times["refresh"].append(time.perf_counter() - t)
                assert outcome.manifest["refresh"]["files_scanned"] == 1
    finally:
        server.stop()
    print(f"{args.rows:,} rows in {args.partitions} objects, {total / 2**20:.1f} MiB")
    for name, values in times.items():
        print(f"{name:9s} median {statistics.median(values):.3f} s  ({len(values)} runs)")
    ratio = statistics.median(times["scan"]) / statistics.median(times["download"])
    print(f"scan of the model's columns / download of every byte: {ratio:.2f}")


if __name__ == "__main__":
    main()
