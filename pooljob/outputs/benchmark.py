"""``[benchmark]``: the estimates adjusted to known totals (issue 12 §6, docs/small-area.md).

The totals table has one row per group of ``by`` (a state) with its total
``T_s``, a weighted mean on the estimates' scale; the weights table one row
per group of the finest benchmarked grouping (a county) with its weight
``w_c`` (population).  Every grouping whose columns include all of ``by``'s
is benchmarked within each ``by`` group (:mod:`pooljob.model.benchmark`):
``estimate`` becomes the benchmarked figure, ``estimate_unbenchmarked``
keeps the model's, and ``std_error``, ``lower``, ``upper``, ``rmse`` follow
the plug-in rule of docs/outputs.md.  The tables are small (one row per
area): read whole through DuckDB with quoted column names, checked here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pooljob.errors import InputError, MissingColumnError
from pooljob.model.benchmark import adjustments, apply, empty_weight, ratio_problem
from pooljob.model.options import BenchmarkConfig, benchmarked_groupings
from pooljob.model.terms import Grouping
from pooljob.outputs.frames import cast_keys
from pooljob.scan.source import open_data, quote_identifier

#: The column of estimates.parquet that keeps the model's estimate of a benchmarked row.
UNBENCHMARKED = "estimate_unbenchmarked"


@dataclass(frozen=True)
class BenchmarkTables:
    """The totals (``by`` columns and ``total``, as Float64) and weights tables, checked."""

    totals: pl.DataFrame
    weights: pl.DataFrame | None


def weight_columns(config: BenchmarkConfig, groupings: tuple[Grouping, ...]) -> list[str]:
    """The key columns the weights table needs: those of every grouping finer than ``by``."""
    cols: list[str] = []
    for g in benchmarked_groupings(groupings, config.by):
        cols += [c for c in g.columns if c not in cols and set(g.columns) != set(config.by)]
    by_first = [c for c in config.by if c in cols]
    return by_first + [c for c in cols if c not in by_first]


def require_benchmark(config: BenchmarkConfig) -> None:
    """Fail before the scan when the totals or weights file is missing."""
    for key, path in (("path", config.path), ("weights_path", config.weights_path)):
        if path is None or "://" in path or any(ch in path for ch in "*?["):
            continue
        if not Path(path).exists():
            raise InputError(f"benchmark table {path!r} does not exist: check [benchmark] {key}")


def _read(path: str, data: Any, wanted: list[str], what: str) -> pl.DataFrame:
    """Read ``wanted`` columns of a small table (a file, or ``data`` itself)."""
    local = "://" not in path and not any(ch in path for ch in "*?[")
    if data is None and local and not Path(path).exists():
        raise InputError(f"{what} does not exist: check the path")
    with open_data(path if data is None else data) as source:
        missing = [c for c in wanted if c not in source.columns]
        if missing:
            raise MissingColumnError(
                f"{what} has no column {missing[0]!r}; available columns: "
                + ", ".join(source.columns)
            )
        sql = "select " + ", ".join(quote_identifier(c) for c in wanted) + " from source"
        table = pl.from_arrow(source.arrow(sql))
    assert isinstance(table, pl.DataFrame)
    if not table.height:
        raise InputError(f"{what} has no rows")
    return table


def _number(table: pl.DataFrame, column: str, what: str, role: str) -> pl.Series:
    try:
        return table[column].cast(pl.Float64)
    except pl.exceptions.PolarsError:
        raise InputError(
            f"{what}: column {column!r} has type {table[column].dtype}; it must be a number "
            f"({role})"
        ) from None


def _describe(row: dict[str, Any], columns: list[str]) -> str:
    return ", ".join(f"{c} = {row[c]!r}" for c in columns)


def _unique(table: pl.DataFrame, keys: list[str], what: str, fix: str) -> None:
    for c in keys:
        nulls = int(table[c].is_null().sum())
        if nulls:
            raise InputError(f"{what}: key column {c!r} has {nulls} null values")
    dup = table.select(keys).is_duplicated()
    if bool(dup.any()):
        first = table.filter(dup).row(0, named=True)
        raise InputError(
            f"{what}: {int(dup.sum())} rows repeat a key ({_describe(first, keys)}); {fix}"
        )


def _one_total_per_group(table: pl.DataFrame, by: list[str], total: str, what: str) -> pl.DataFrame:
    """The totals of a table with one row per finest group: one row per ``by`` group.

    Raises
    ------
    InputError
        The total differs between two rows of one ``by`` group.
    """
    values = _fresh("values", [*by, total])
    counts = table.group_by(by).agg(pl.col(total).n_unique().alias(values))
    differ = counts.filter(pl.col(values) > 1)
    if differ.height:
        first = differ.row(0, named=True)
        raise InputError(
            f"{what}: the total column {total!r} takes {first[values]} values within "
            f"{_describe(first, by)}; with the weights in the same table, every row of a "
            "group repeats its total (or give the weights in weights_path)"
        )
    return table.select([*by, total]).unique(subset=by, keep="first", maintain_order=True)


def read_benchmark(
    config: BenchmarkConfig,
    groupings: tuple[Grouping, ...],
    totals_data: Any = None,
    weights_data: Any = None,
) -> BenchmarkTables:
    """Read and check the totals and weights tables of ``config``.

    ``totals_data``, ``weights_data``, when given, are the tables themselves
    (any input of :func:`pooljob.fit`); the paths then only name them.

    Raises
    ------
    InputError
        A missing file or column (naming those available), no rows, a null
        key, a repeated key, or a null, non-numeric or infinite total; a
        null, infinite or negative weight.
    """
    by = list(config.by)
    what = f"benchmark totals table {config.path!r}"
    keys = weight_columns(config, groupings)
    one_table = bool(keys) and config.weight is not None and config.weights_path is None
    if one_table:  # one row per finest group: its keys, weight and its by group's total
        assert config.weight is not None
        both = _read(config.path, totals_data, [*keys, config.weight, config.total], what)
        totals = _one_total_per_group(both, by, config.total, what)
    else:
        totals = _read(config.path, totals_data, [*by, config.total], what)
    _unique(totals, by, what, f"each group of {', '.join(by)} needs exactly one total")
    value = _number(totals, config.total, what, "the benchmark of each group")
    bad = ~value.is_finite() | value.is_null()
    if bool(bad.any()):
        first = totals.filter(bad).row(0, named=True)
        raise InputError(
            f"{what}: total column {config.total!r} has {int(bad.sum())} null or non-finite "
            f"values (e.g. for {_describe(first, by)}); every group needs a total"
        )
    totals = totals.with_columns(value.alias(config.total))
    if not keys or config.weight is None:
        return BenchmarkTables(totals, None)
    if one_table:
        weights = both.select([*keys, config.weight])
    else:
        assert config.weights_path is not None
        what = f"benchmark weights table {config.weights_path!r}"
        weights = _read(config.weights_path, weights_data, [*keys, config.weight], what)
    _unique(weights, keys, what, "each group needs exactly one weight: aggregate them first")
    w = _number(weights, config.weight, what, "the weight (population) of each group")
    bad = w.is_null() | ~w.is_finite() | (w < 0)
    if bool(bad.any()):
        first = weights.filter(bad).row(0, named=True)
        raise InputError(
            f"{what}: weight column {config.weight!r} has {int(bad.sum())} null, infinite or "
            f"negative values (e.g. for {_describe(first, keys)}); every group needs a weight >= 0"
        )
    return BenchmarkTables(totals, weights.with_columns(w.alias(config.weight)))


def _fresh(name: str, taken: list[str]) -> str:
    """``name`` with underscores added until it is not one of ``taken``."""
    while name in taken:
        name = "_" + name
    return name


def _typed(
    table: pl.DataFrame, columns: list[str], target: pl.DataFrame, names: dict[str, str], what: str
) -> pl.DataFrame:
    """``table``'s key ``columns`` renamed to their published names, in the estimates' types."""
    out = table.rename({c: names[c] for c in columns})
    types = {names[c]: target[names[c]].dtype for c in columns}
    return cast_keys(out, types, what, {names[c]: c for c in columns})


def _nulls_kept(like: pl.Series, values: Any) -> pl.Series:
    """``values`` as a Float64 column named as ``like``, null where ``like`` is null or False."""
    keep = like.is_not_null() if like.dtype != pl.Boolean else like
    frame = pl.DataFrame({"keep": keep, "value": pl.Series(values, dtype=pl.Float64)})
    return frame.select(pl.when("keep").then("value").alias(like.name)).to_series()


def benchmark_estimates(
    estimates: pl.DataFrame,
    key_columns: dict[str, str],
    groupings: tuple[Grouping, ...],
    config: BenchmarkConfig,
    tables: BenchmarkTables,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The benchmarked estimates table and the manifest's ``benchmark`` record.

    Raises
    ------
    InputError
        A group with estimates but no total or no weight, a group whose
        weights sum to 0, or (ratio) a group whose estimates and total are
        not all of one strict sign.
    """
    by, method = list(config.by), config.method
    names = {c: key_columns.get(c, c) for c in key_columns}
    taken = [*estimates.columns, *tables.totals.columns]
    taken += tables.weights.columns if tables.weights is not None else []
    row_id, total_id, w_id = (_fresh(n, taken) for n in ("row", "total_row", "weight"))
    totals = _typed(
        tables.totals.with_row_index(total_id), by, estimates, names, "benchmark totals table"
    )
    t_values = totals[config.total].to_numpy().astype(np.float64)
    columns = {c: estimates[c].to_numpy().copy() for c in ("estimate", "std_error", "lower")}
    columns |= {c: estimates[c].to_numpy().copy() for c in ("upper", "rmse")}
    before = np.full(estimates.height, np.nan)
    touched = np.zeros(estimates.height, dtype=bool)
    records: list[dict[str, Any]] = []
    used = np.zeros(totals.height, dtype=bool)
    indexed = estimates.with_row_index(row_id)
    for g in benchmarked_groupings(groupings, config.by):
        own = [names[c] for c in g.columns]
        rows = indexed.filter(pl.col("grouping") == g.name).select(row_id, *own)
        if not rows.height:
            continue
        joined = rows.join(
            totals.select(total_id, *(names[c] for c in by)), on=[names[c] for c in by], how="left"
        )
        missing = joined.filter(pl.col(total_id).is_null())
        if missing.height:
            first = missing.row(0, named=True)
            raise InputError(
                f"benchmark totals table {config.path!r} has no row for "
                f"{_describe(first, [names[c] for c in by])}, which {missing.height} "
                f"{g.name} group(s) with estimates need; add its total (or drop its rows "
                "from the source)"
            )
        if set(g.columns) == set(config.by) or tables.weights is None:
            weight = np.ones(joined.height)
        else:
            wkeys = list(g.columns)
            w = (
                tables.weights.group_by(wkeys)
                .agg(pl.col(str(config.weight)).sum().alias(w_id))
                .pipe(_typed, wkeys, estimates, names, "benchmark weights table")
            )
            joined = joined.join(w, on=own, how="left")
            gap = joined.filter(pl.col(w_id).is_null())
            if gap.height:
                first = gap.row(0, named=True)
                raise InputError(
                    f"benchmark weights table {config.weights_path or config.path!r} has no "
                    f"weight for {g.name} {_describe(first, own)} ({gap.height} groups with "
                    "estimates lack one); every benchmarked group needs its weight"
                )
            weight = joined[w_id].to_numpy().astype(np.float64)
        idx = joined[row_id].to_numpy().astype(np.int64)
        code = joined[total_id].to_numpy().astype(np.int64)
        theta = estimates["estimate"].to_numpy()[idx]
        where = f"benchmark of {g.name} within {', '.join(by)}"
        bad = empty_weight(weight, code, totals.height)
        if bad is not None:
            raise InputError(
                f"{where}: the weights of every {g.name} group in "
                f"{_describe(totals.row(bad, named=True), [names[c] for c in by])} are 0; "
                "their weighted mean is undefined"
            )
        if method == "ratio":
            bad = ratio_problem(theta, code, t_values)
            if bad is not None:
                in_group = theta[code == bad]
                raise InputError(
                    f"{where}: ratio benchmarking needs a group's estimates and total of one "
                    f"sign, but {_describe(totals.row(bad, named=True), [names[c] for c in by])} "
                    f"has estimates from {in_group.min():.6g} to {in_group.max():.6g} and total "
                    f"{t_values[bad]:.6g}; use method = 'difference'"
                )
        adj = adjustments(theta, weight, code, t_values, method)
        per_row = adj.adjustment[code]
        before[idx] = theta
        touched[idx] = True
        for c in ("estimate", "lower", "upper"):
            columns[c][idx] = apply(columns[c][idx].astype(np.float64), per_row, method, False)
        for c in ("std_error", "rmse"):
            columns[c][idx] = apply(columns[c][idx].astype(np.float64), per_row, method, True)
        for s in np.flatnonzero(adj.members > 0):
            used[s] = True
            row = totals.row(int(s), named=True)
            records.append(
                {
                    "grouping": g.name,
                    "keys": {c: row[names[c]] for c in by},
                    "total": float(t_values[s]),
                    "unbenchmarked": float(adj.mean[s]),
                    "weight": float(adj.weight[s]),
                    "members": int(adj.members[s]),
                    "adjustment": float(adj.adjustment[s]),
                }
            )
    out = estimates.with_columns(
        *(_nulls_kept(estimates[c], v) for c, v in columns.items()),
        _nulls_kept(pl.Series(UNBENCHMARKED, touched), before),
    )
    adjusted = np.array([r["adjustment"] for r in records]) if records else np.zeros(0)
    record = {
        "path": config.path,
        "by": by,
        "total": config.total,
        "weights_path": config.weights_path,
        "weight": config.weight,
        "method": method,
        "groupings": [g.name for g in benchmarked_groupings(groupings, config.by)],
        "adjustment_min": float(adjusted.min()) if adjusted.size else None,
        "adjustment_max": float(adjusted.max()) if adjusted.size else None,
        "totals_unused": int((~used).sum()),
        "groups": records,
    }
    return out, record
