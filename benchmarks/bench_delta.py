"""Publishing as Delta tables against Parquet: the demo job (20,000 rows), run after run.

Runs ``configs/demo.toml`` alternately with ``[output] format = "parquet"``
and ``"delta"`` (each on its own output path, keep_runs = 5) and prints the
median wall time of a whole run and of its write + publish, and their
ratios.  Needs ``pip install 'pooljob[delta]'``.

    python benchmarks/bench_delta.py [REPEATS]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pooljob.job.config import load_config
from pooljob.job.demo import write_demo_data
from pooljob.job.run import run

ROOT = Path(__file__).resolve().parent.parent


def main(repeats: int = 7) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        write_demo_data(base / "demo" / "data")
        configs = {}
        for fmt in ("parquet", "delta"):
            folder = base / fmt / "configs"
            folder.mkdir(parents=True)
            text = (ROOT / "configs" / "demo.toml").read_text()
            text = text.replace("[output]\n", f'[output]\nformat = "{fmt}"\n', 1)
            (folder / "demo.toml").write_text(text)
            shutil.copytree(base / "demo", base / fmt / "demo")
            configs[fmt] = load_config(folder / "demo.toml")
        total: dict[str, list[float]] = {"parquet": [], "delta": []}
        publish: dict[str, list[float]] = {"parquet": [], "delta": []}
        for _ in range(repeats):
            for fmt, config in configs.items():
                t0 = time.perf_counter()
                outcome = run(config, full=True)
                total[fmt].append(time.perf_counter() - t0)
                timings = outcome.manifest["timings_seconds"]
                publish[fmt].append(
                    total[fmt][-1]
                    - timings["open"]
                    - timings["scan"]
                    - timings["fit"]
                    - timings.get("tables", 0.0)
                )
        for name, data in (("whole run", total), ("write + publish", publish)):
            p, d = statistics.median(data["parquet"]), statistics.median(data["delta"])
            print(f"{name:16s} parquet {p:.3f} s  delta {d:.3f} s  ratio {d / p:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
