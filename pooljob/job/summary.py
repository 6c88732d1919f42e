"""What ``pooljob run`` prints on stdout: the fit's summary and the first rows of its tables."""

from __future__ import annotations

from typing import Any

import polars as pl

from pooljob.model.formula import Grouping
from pooljob.outputs.tables import FitResult


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
        + (
            f"objective {result.objective:.6f}, {result.optimizer['evaluations']} evaluations"
            if result.approximation is None
            else f"solver iterative, {result.optimizer['evaluations']} scoring steps (approximate)"
        ),
        "fixed effects: "
        + ", ".join(
            f"{t} {_fmt(e)} (se {_fmt(s)})" for t, e, s in result.coefficients.head(top).iter_rows()
        )
        + (" …" if result.coefficients.height > top else ""),
        "standard deviations: "
        + ", ".join(
            f"{g} {t or ''} {_fmt(s)}".replace("  ", " ")
            for g, t, t2, s in result.components.select("grouping", "term1", "term2", "sd").rows()
            if t2 is None
        ),
    ]
    est = result.estimates
    if result.benchmarked is not None:  # the pull is the model's: before benchmarking
        est = est.with_columns(pl.coalesce("estimate_unbenchmarked", "estimate").alias("estimate"))
    if result.nested:
        for k in range(len(result.hierarchy) - 1, -1, -1):
            lines.extend(_pulled(est, result.hierarchy, result.key_columns, k, top if k else 3))
        return "\n".join(lines)
    names = result.key_columns
    for grouping in result.hierarchy:
        rows = est.filter(pl.col("grouping") == grouping.name)
        rows = rows.sort((pl.col("estimate") - pl.col("raw_mean")).abs(), descending=True)
        lines.append(f"{grouping.name}: groups whose estimate moved furthest from their raw mean:")
        for r in rows.head(3).iter_rows(named=True):
            label = ":".join(str(r[names[c]]) for c in grouping.columns)
            shrink = r["shrinkage"]
            tail = f"  (shrinkage {shrink:.2f})" if shrink is not None and shrink == shrink else ""
            lines.append(
                f"  {label:<18} n={r['n']:<6} {_fmt(r['raw_mean']):>8} -> "
                f"{_fmt(r['estimate']):>8}{tail}"
            )
    return "\n".join(lines)


def _pulled(
    est: pl.DataFrame, hier: tuple[Grouping, ...], names: dict[str, str], k: int, top: int
) -> list[str]:
    """Lines for the groups of level ``k`` whose estimate moved furthest from their raw mean."""
    level = hier[k]
    rows = est.filter(pl.col("grouping") == level.name)
    toward = hier[k - 1].name if k > 0 else "the overall mean"
    rows = rows.sort((pl.col("estimate") - pl.col("raw_mean")).abs(), descending=True).head(top)
    lines = [f"{level.name}: groups pulled furthest toward {toward} (raw mean -> estimate):"]
    for r in rows.iter_rows(named=True):
        label = ":".join(str(r[names[c]]) for c in level.columns)
        lines.append(
            f"  {label:<18} n={r['n']:<6} {_fmt(r['raw_mean']):>8} -> {_fmt(r['estimate']):>8}"
            f"  (parent {_fmt(r['parent'])}, shrinkage {r['shrinkage']:.2f})"
        )
    return lines


def benchmark_text(record: dict[str, Any]) -> str:
    """One line: what was benchmarked, and the range of the adjustments."""
    word = "factors" if record["method"] == "ratio" else "differences"
    return (
        f"benchmarked ({record['method']}): {', '.join(record['groupings'])} within "
        f"{', '.join(record['by'])} to {record['total']!r}, {len(record['groups'])} groups, "
        f"{word} {record['adjustment_min']:.6g} to {record['adjustment_max']:.6g}"
    )


def predictions_text(table: pl.DataFrame, most: int = 10) -> str:
    """The first rows of the predictions table, for the terminal."""
    numbers = ("estimate", "std_error", "lower", "upper", "unseen")
    keys = [c for c in table.columns if c not in numbers]
    unseen = table.height - table["unseen"].null_count()
    lines = [f"predictions: {table.height} cells, {unseen} with levels the sample never saw"]
    for row in table.head(most).iter_rows(named=True):
        label = ":".join(str(row[k]) for k in keys) or "all"
        tail = f"  unseen: {row['unseen']}" if row["unseen"] is not None else ""
        lines.append(
            f"  {label:<18} {row['estimate']:.4g}  ({row['lower']:.4g} to {row['upper']:.4g})"
            + tail
        )
    if table.height > most:
        lines.append(f"  ... {table.height - most} more in predictions.parquet")
    return "\n".join(lines)


def poststratified_text(table: pl.DataFrame, most: int = 10) -> str:
    """The first rows of the poststratified table, for the terminal."""
    keys = [c for c in table.columns if c not in ("estimate", "std_error", "lower", "upper")]
    keys = [c for c in keys if c != "population"]
    lines = ["poststratified" + (f" by {', '.join(keys)}:" if keys else ":")]
    for row in table.head(most).iter_rows(named=True):
        label = ":".join(str(row[k]) for k in keys) or "all"
        lines.append(
            f"  {label:<18} {row['estimate']:.4g}  ({row['lower']:.4g} to {row['upper']:.4g}), "
            f"population {row['population']:,.0f}"
        )
    if table.height > most:
        lines.append(f"  ... {table.height - most} more in poststratified.parquet")
    return "\n".join(lines)
