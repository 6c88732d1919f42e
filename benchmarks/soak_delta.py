"""SIGKILL at random moments of Delta runs: every table stays readable, ``runs`` complete.

Publishes a small job with ``[output] format = "delta"``, then starts
``pooljob run --full`` KILLS times and SIGKILLs each at a random moment
between half and all of a run's duration (so mostly while it writes), and
checks after each kill that every table's latest version is one run's and
that the ``runs`` protocol (docs/outputs.md) gives a complete run.  Prints
how many kills left the tables' latest versions from two runs (the case
the protocol is for).  Not part of the test suite: about 2 s a kill.

    python benchmarks/soak_delta.py [KILLS]
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from pooljob.job.cli import main as cli
from pooljob.outputs.delta import latest_run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import write_config, write_rows  # noqa: E402

CHILD = (
    "import sys; from pooljob.job.cli import main; "
    "sys.exit(main(['--quiet', 'run', '--full', sys.argv[1]]))"
)


def check(out: Path) -> bool:
    """Assert the invariants; True if the tables' latest versions come from two runs."""
    run = latest_run(out)
    latest = set()
    for table, version in run["tables"].items():
        at = pl.read_delta(str(out / table), version=version)["run_id"].unique().to_list()
        assert at == [run["run_id"]], (table, version, at)
        ids = pl.read_delta(str(out / table))["run_id"].unique().to_list()
        assert len(ids) == 1, (table, ids)
        latest.add(ids[0])
    return len(latest) > 1


def main(kills: int = 40) -> None:
    random.seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_rows(folder / "data" / "part-0.parquet")
        cfg = write_config(folder, format="delta", keep_runs=2)
        out = folder / "out"
        assert cli(["--quiet", "run", str(cfg)]) == 0
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", CHILD, str(cfg)], check=True)
        duration = time.perf_counter() - t0
        mixed = 0
        for _ in range(kills):
            child = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg)])
            time.sleep(random.uniform(0.5 * duration, 1.05 * duration))
            child.send_signal(signal.SIGKILL)
            child.wait()
            mixed += check(out)
        assert cli(["--quiet", "run", str(cfg)]) == 0
        print(
            f"{kills} kills (a run takes {duration:.2f} s): every table readable, runs complete "
            f"after each; {mixed} left the tables' latest versions from two runs; "
            f"runs recorded {latest_run(out)['sequence']}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
