"""Command line: ``pooljob run CONFIG``, ``pooljob validate CONFIG``, ``pooljob demo-data DIR``.

Exit codes: 0 success; 2 bad config or formula; 3 bad input data; 4 output
locked by another run; 5 outputs could not be written; 70 internal error.
Errors are one line on stderr, with no traceback unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import polars as pl

from pooljob.errors import PooljobError
from pooljob.formula import Grouping
from pooljob.results import FitResult

log = logging.getLogger("pooljob")


def _setup_logging(verbose: bool, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pooljob %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _fmt(x: float) -> str:
    return f"{x:,.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


def format_summary(result: FitResult, top: int = 6) -> str:
    """A short text summary: components and the groups pulled furthest."""
    lines = [
        f"{result.formula.text}  ({result.family}, {result.method.upper()})",
        f"rows: {result.rows['read']:,} read, {result.rows['used']:,} used"
        + "".join(
            f"; {v:,} dropped ({k.replace('_', ' ')})"
            for k, v in result.rows["dropped"].items()
            if v
        ),
        f"fit: {'converged' if result.converged else 'NOT converged'}"
        f"{' (singular: a variance is 0)' if result.singular else ''}, "
        f"objective {result.objective:.6f}, {result.optimizer['evaluations']} evaluations",
        f"intercept: {_fmt(result.coefficients['estimate'][0])} "
        f"(se {_fmt(result.coefficients['std_error'][0])})",
        "standard deviations: "
        + ", ".join(f"{g} {_fmt(s)}" for g, s in result.components.select("grouping", "sd").rows()),
    ]
    est = result.estimates
    overall = result.coefficients["estimate"][0]
    for k in range(len(result.hierarchy) - 1, -1, -1):
        lines.extend(_pulled(est, result.hierarchy, k, overall, top if k else 3))
    return "\n".join(lines)


def _pulled(
    est: pl.DataFrame, hier: tuple[Grouping, ...], k: int, overall: float, top: int
) -> list[str]:
    """Lines for the groups of level ``k`` whose estimate moved furthest from their raw mean."""
    level = hier[k]
    rows = est.filter(pl.col("grouping") == level.name)
    if k > 0:
        parent = hier[k - 1]
        parent_est = est.filter(pl.col("grouping") == parent.name).select(
            *parent.columns, pl.col("estimate").alias("parent_estimate")
        )
        rows = rows.join(parent_est, on=list(parent.columns), how="left")
        toward = parent.name
    else:
        rows = rows.with_columns(pl.lit(overall).alias("parent_estimate"))
        toward = "the overall mean"
    rows = rows.sort((pl.col("estimate") - pl.col("raw_mean")).abs(), descending=True).head(top)
    lines = [f"{level.name}: groups pulled furthest toward {toward} (raw mean -> estimate):"]
    for r in rows.iter_rows(named=True):
        label = ":".join(str(r[c]) for c in level.columns)
        lines.append(
            f"  {label:<18} n={r['n']:<6} {_fmt(r['raw_mean']):>8} -> {_fmt(r['estimate']):>8}"
            f"  (parent {_fmt(r['parent_estimate'])}, shrinkage {r['shrinkage']:.2f})"
        )
    return lines


def _cmd_run(args: argparse.Namespace) -> int:
    from pooljob.config import load_config
    from pooljob.job import run

    config = load_config(args.config)
    outcome = run(config)
    if not args.quiet:
        print(format_summary(outcome.result))
        print(f"published: {config.output.path / 'current'} -> runs/{outcome.run_id}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from pooljob.config import load_config
    from pooljob.source import open_config_source
    from pooljob.statistics import check_schema

    config = load_config(args.config)
    s = config.source
    with open_config_source(
        path=s.path, database=s.database, table=s.table, query=s.query, where=s.where
    ) as source:
        check_schema(source, config.model.formula)
    print(
        f"config {args.config!r} is valid; columns found: "
        + ", ".join(config.model.formula.columns)
    )
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from pooljob.demo import write_demo_data

    path = write_demo_data(args.directory, rows=args.rows, seed=args.seed)
    print(f"demo data written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pooljob`` command."""
    parser = argparse.ArgumentParser(
        prog="pooljob",
        description="Partially pooled group means (multilevel models) from DuckDB statistics.",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logs and tracebacks")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="fit the model of CONFIG and publish its outputs")
    p_run.add_argument("config")
    p_run.set_defaults(func=_cmd_run)
    p_val = sub.add_parser("validate", help="check CONFIG and the source schema, without fitting")
    p_val.add_argument("config")
    p_val.set_defaults(func=_cmd_validate)
    p_demo = sub.add_parser("demo-data", help="write the deterministic demo data set")
    p_demo.add_argument("directory")
    p_demo.add_argument("--rows", type=int, default=20_000)
    p_demo.add_argument("--seed", type=int, default=2012)
    p_demo.set_defaults(func=_cmd_demo_data)
    for p in (p_run, p_val, p_demo):
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS)
        p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        code: int = args.func(args)
        return code
    except PooljobError as exc:
        if args.verbose:
            log.exception("failed")
        print(f"pooljob: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pooljob: interrupted; the published output was left as it was", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: still one line unless --verbose
        if args.verbose:
            log.exception("internal error")
        print(
            f"pooljob: internal error: {type(exc).__name__}: {exc} "
            "(run again with --verbose for the traceback)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
