"""Coverage of the 95% intervals of group means: plug-in against Prasad–Rao.

Simulates the one-way model ``y_ij = μ + u_j + e_ij`` with ``u_j ~ N(0, τ²)``,
``e_ij ~ N(0, σ²)``, τ = 1, σ = 2, μ = 10, and 2–20 rows per group (uniform),
for 5, 10, 30 and 100 groups.  Each replication draws new effects and rows,
fits by REML through the model layer (the nested tree solver, from the
groups' counts, means and within sums of squares: what a run scans), and
checks whether each group's interval contains its true mean ``μ + u_j``:

* ``plugin``: ``estimate ∓ z·std_error`` (Henderson's prediction error at
  the estimated variances: g1 + g2);
* ``prasad-rao``: ``estimate ∓ z·rmse``, ``rmse = √(g1 + g2 + 2 g3)``
  (:mod:`pooljob.model.second_order`).

Prints, per number of groups and method, the coverage over all groups of all
replications with its Monte Carlo standard error (from the spread of the
per-replication coverages), the mean interval width, and the share of fits at
the boundary (τ̂² = 0).  ``python benchmarks/coverage_intervals.py --reps 2000``
"""

from __future__ import annotations

import argparse
import time
from statistics import NormalDist

import numpy as np

from pooljob.model.nested import NestedStats
from pooljob.model.nested_fit import fit_nested
from pooljob.model.second_order import tree_g3

TAU, SIGMA, MU = 1.0, 2.0, 10.0


def one_replication(
    rng: np.random.Generator, groups: int, z: float
) -> tuple[float, float, float, float, bool]:
    """Coverage and mean width of both methods in one simulated data set, and τ̂² = 0."""
    n = rng.integers(2, 21, size=groups).astype(np.float64)
    u = rng.normal(0.0, TAU, size=groups)
    rows = [MU + u[j] + rng.normal(0.0, SIGMA, size=int(n[j])) for j in range(groups)]
    mean = np.array([r.mean() for r in rows])
    within = np.array([((r - r.mean()) ** 2).sum() for r in rows])
    parents = (np.zeros(groups, dtype=np.int64),)
    fit = fit_nested(NestedStats(n, mean, within, parents), "reml")
    level = fit.levels[0]
    g3 = tree_g3(n, parents, fit.variances, fit.sigma2)
    rmse = np.sqrt(level.std_error**2 + 2.0 * g3)
    truth = MU + u
    out = []
    for spread in (level.std_error, rmse):
        covered = np.abs(level.estimate - truth) <= z * spread
        out += [float(covered.mean()), float(2.0 * z * spread.mean())]
    return out[0], out[1], out[2], out[3], bool(fit.variances[0] == 0.0)


def main() -> None:
    """Run the simulation and print the table (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=1000, help="replications per size")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--groups", type=int, nargs="+", default=[5, 10, 30, 100])
    args = parser.parse_args()
    z = NormalDist().inv_cdf(0.975)
    print(f"one-way model, tau = {TAU:g}, sigma = {SIGMA:g}, 2-20 rows per group, REML, ")
    print(f"{args.reps} replications per row, seed {args.seed}; nominal coverage 95%\n")
    print("| groups | method | coverage | MC s.e. | mean width | τ̂² = 0 |")
    print("|---:|---|---:|---:|---:|---:|")
    for groups in args.groups:
        rng = np.random.default_rng([args.seed, groups])
        t0 = time.perf_counter()
        res = np.array([one_replication(rng, groups, z) for _ in range(args.reps)])
        seconds = time.perf_counter() - t0
        boundary = res[:, 4].mean()
        for name, cov, width in (("plugin", 0, 1), ("prasad-rao", 2, 3)):
            c = res[:, cov]
            se = c.std(ddof=1) / np.sqrt(len(c))
            print(
                f"| {groups} | {name} | {c.mean():.1%} | {se:.1%} | {res[:, width].mean():.3f} "
                f"| {boundary:.0%} |"
            )
        print(f"<!-- {groups} groups: {seconds:.1f} s -->")


if __name__ == "__main__":
    main()
