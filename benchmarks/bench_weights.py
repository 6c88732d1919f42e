"""Benchmark: what observation weights cost, against the same fit without them.

Generates N rows (default 5M, 10k groups under 100 parents, a covariate and a
weight column) as Parquet with a seed, then times in the same run, alternating:

* unweighted: ``pooljob.fit("y ~ x + (1 | p/g)", path)``;
* weighted: the same with ``weights="w"`` (one query checking the weights, then
  the scan of weighted sums: ``Σ w``, ``Σ w v``, ``Σ w v vᵀ``, ``Σ log w``).

Prints the median of each and their ratio.

    python benchmarks/bench_weights.py --rows 5_000_000 --groups 10_000 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

import pooljob

GENERATE = """
copy (
    select
        'p' || (g % 100)::varchar as p,
        g,
        x,
        0.2 + 2.0 * u3 as w,
        100.0 + effect * 5.0 + 0.5 * x
            + sqrt(-2.0 * ln(u1)) * cos(2.0 * pi() * u2) * 20.0 / sqrt(0.2 + 2.0 * u3) as y
    from (
        select
            (hash(i, $seed) % $groups)::integer as g,
            ((hash(hash(i, $seed) % $groups, $seed) % 1000003) / 1000003.0 - 0.5) * 3.4 as effect,
            ((hash(i, $seed + 1) % 1000000007) + 1) / 1000000008.0 as u1,
            ((hash(i, $seed + 2) % 1000000007) + 1) / 1000000008.0 as u2,
            ((hash(i, $seed + 3) % 1000000007) + 1) / 1000000008.0 as u3,
            ((hash(i, $seed + 4) % 1000003) / 1000003.0 - 0.5) * 10.0 as x
        from range($rows) as t(i)
    )
) to '{path}' (format parquet, row_group_size 1000000)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.parquet"
        duckdb.connect().execute(
            GENERATE.format(path=str(path).replace("'", "''")),
            {"seed": args.seed, "groups": args.groups, "rows": args.rows},
        )
        formula = "y ~ x + (1 | p/g)"
        times: dict[str, list[float]] = {"unweighted": [], "weighted": []}
        objective = {}
        for _ in range(args.repeat):
            for name, weights in (("unweighted", None), ("weighted", "w")):
                t0 = time.perf_counter()
                fit = pooljob.fit(formula, str(path), weights=weights)
                times[name].append(time.perf_counter() - t0)
                objective[name] = fit.objective
        plain, weighted = (statistics.median(times[k]) for k in ("unweighted", "weighted"))
        print(f"{args.rows:,} rows, {args.groups:,} groups, {formula}, median of {args.repeat}:")
        print(f"  unweighted {plain:.3f} s   objective {objective['unweighted']:.6f}")
        print(f"  weighted   {weighted:.3f} s   objective {objective['weighted']:.6f}")
        print(f"  weighted / unweighted = {weighted / plain:.2f}")


if __name__ == "__main__":
    main()
