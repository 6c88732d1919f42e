"""One DuckDB pass: the source reduced to per-cell moments of the model's variables.

A cell is one combination of the model's key columns (grouping factors and
categorical variables).  Every row of a cell shares its levels, so for a
Gaussian model the cross-products ``[Z X y]'[Z X y]`` are sums over cells of
the cells' counts, means and co-moments of the numeric variables.  The query
is ``sql/cell_stats.sql``; this module fills it with quoted identifiers,
binds the centring shifts, and accounts for the rows it cannot use.  The
same query, transpiled by sqlglot, runs on Spark (:mod:`pooljob.scan.spark_sql`):
one definition of each statistic serves both engines.

Names: the query reads the source's columns in its first step only, and
renames them there to names of its own (key column ``i`` is ``k<i>``,
numeric variable ``i`` is ``v<i>``); its result names only those.  So a
user's column may be called anything (``v1``, ``n_rows``, ``k0``) without
changing a statistic.  :func:`key_frame` gives the keys back their names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.errors import InputError
from pooljob.model.cells import CellTable, NumericVariable
from pooljob.scan.source import TableSource, quote_identifier

#: Largest ratio of |mean| to the spread of a variable for which uncentred
#: sums lose less than ~1e-12 relative (doubles carry ~1e-16).
CENTRING_RATIO = 1e4
#: The same for the raw weighted sums of observation weights (``Σ w v vᵀ``, whose
#: co-moments lose ``(m/s)² · 1e-16``): at most ~1e-12 relative.
WEIGHTED_CENTRING_RATIO = 1e2

DROP_REASONS = ("null_group_key", "null_response", "nonfinite_response", "unusable_covariate")

#: The name :func:`file_column` starts from: of the column naming each row's
#: source file in the per-file scan (``sql/file_cell_stats.sql``,
#: :mod:`pooljob.job.refresh`).
FILE_COLUMN = "__pooljob_file"
#: What the per-file query calls that column in its result.
FILE_ALIAS = "file"


def file_column(columns: Iterable[str]) -> str:
    """A name for the column naming each row's file that is no column of the source.

    ``FILE_COLUMN``, else ``FILE_COLUMN_1``, ``_2`` …: the first that differs
    from every name in ``columns`` ignoring case (DuckDB matches column
    names without regard to case).
    """
    taken = {c.casefold() for c in columns}
    name, k = FILE_COLUMN, 0
    while name.casefold() in taken:
        k += 1
        name = f"{FILE_COLUMN}_{k}"
    return name


def key_aliases(keys: tuple[str, ...]) -> list[str]:
    """The query's names of the key columns: ``k0``, ``k1`` … in the order of ``keys``."""
    return [f"k{i}" for i in range(len(keys))]


def key_frame(table: pl.DataFrame, keys: tuple[str, ...]) -> pl.DataFrame:
    """The key columns of a query's rows (``k<i>``) under their own names, types kept."""
    return table.select([pl.col(a).alias(k) for a, k in zip(key_aliases(keys), keys, strict=True)])


def source_column(name: str) -> str:
    """A column of the view ``source``, quoted and qualified: never one of the query's names."""
    return "source." + quote_identifier(name)


def sql_text(name: str) -> str:
    """Return the text of ``sql/<name>.sql``, installed or from the source tree."""
    package = Path(__file__).resolve().parent.parent  # pooljob/
    for folder in (package / "sql", package.parent / "sql"):
        candidate = folder / f"{name}.sql"
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise FileNotFoundError(f"pooljob SQL file {name}.sql is missing from the installation")


def cell_stats_sql(
    keys: tuple[str, ...],
    variables: tuple[NumericVariable, ...],
    finite_only: bool,
    count_finite_response: bool = False,
    by: str | None = None,
    weight: str | None = None,
) -> str:
    """The cell query with identifiers quoted; shifts are the parameters ``$s<i>``.

    With ``by``, the column naming each row's source file, it is the per-file
    query ``sql/file_cell_stats.sql``: the same statistics, one row per file
    (column ``file``) and cell.  Key column ``i`` is ``k<i>`` in the result.
    With ``weight``, the column of observation weights ``w`` (read as ``w``),
    the rows with ``w > 0`` only, and instead of ``mean_<i>`` and
    ``cov_<i>_<j>`` the weighted sums (:func:`weighted_aggregates`).
    """
    aliases = key_aliases(keys)
    key_sql = ", ".join(aliases)
    exprs = [f"{source_column(k)} as {a}" for k, a in zip(keys, aliases, strict=True)]
    for i, v in enumerate(variables):
        product = " * ".join(f"cast({source_column(c)} as double)" for c in v.columns)
        exprs.append(f"{product} - $s{i} as v{i}")
    m = len(variables)
    aggs = []
    if weight is None:
        for i in range(m):
            aggs += [f"count(v{i}) as n_{i}", f"avg(v{i}) as mean_{i}"]
        for i in range(m):
            for j in range(i, m):
                agg = f"var_pop(v{i})" if i == j else f"covar_pop(v{i}, v{j})"
                aggs.append(f"{agg} as cov_{i}_{j}")
    else:
        exprs.append(f"cast({source_column(weight)} as double) as w")
        aggs += [f"count(v{i}) as n_{i}" for i in range(m)] + weighted_aggregates(m)
    if count_finite_response:
        aggs.append("count(*) filter (where isfinite(v0)) as n_finite_0")
    conditions = ["w > 0"] if weight is not None else []
    if finite_only:
        conditions += [f"isfinite(v{i})" for i in range(m)]
    filt = "where " + " and ".join(conditions) if conditions else ""
    fields = {
        "key_list": key_sql + "," if keys else "",
        "group_by": f"group by {key_sql}" if keys else "",
        "columns": ",\n        ".join(exprs),
        "aggregates": ",\n        ".join(aggs),
        "filter": filt,
    }
    if by is None:
        return sql_text("cell_stats").format(**fields)
    fields["group_by"] = f"group by {FILE_ALIAS}" + (f", {key_sql}" if keys else "")
    return sql_text("file_cell_stats").format(file_column=source_column(by), **fields)


def weighted_aggregates(m: int) -> list[str]:
    """The weighted sums of a cell, observation weight ``w``, variables ``v<i>`` (centred).

    ``w_sum = Σ w``, ``log_w = Σ log w``, ``wsum_<i> = Σ w v_i`` and
    ``wprod_<i>_<j> = Σ w v_i v_j`` (``i ≤ j``): the weighted mean is
    ``wsum/w_sum`` and the weighted co-moment ``wprod − wsum_i wsum_j / w_sum``
    (:func:`cell_arrays`).  Unlike DuckDB's one-pass ``var_pop`` these are raw
    sums, so a co-moment loses about ``(m/s)² · 1e-16`` relative where ``m``
    is the cell's mean about the centring shift and ``s`` its spread; the
    centring (:func:`centring_shifts`) keeps ``m/s`` moderate.
    """
    aggs = ["sum(w) as w_sum", "sum(ln(w)) as log_w"]
    aggs += [f"sum(w * v{i}) as wsum_{i}" for i in range(m)]
    for i in range(m):
        for j in range(i, m):
            aggs.append(f"sum(w * v{i} * v{j}) as wprod_{i}_{j}")
    return aggs


def _run(
    source: TableSource,
    keys: tuple[str, ...],
    variables: tuple[NumericVariable, ...],
    shifts: NDArray[np.float64],
    finite_only: bool,
    count_finite_response: bool = False,
    by: str | None = None,
    weight: str | None = None,
) -> pl.DataFrame:
    sql = cell_stats_sql(keys, variables, finite_only, count_finite_response, by, weight)
    params = {f"s{i}": float(s) for i, s in enumerate(shifts)}
    table = pl.from_arrow(source.arrow(sql, params))
    assert isinstance(table, pl.DataFrame)
    return table


def null_key(keys: tuple[str, ...]) -> pl.Expr:
    """True for a query's cell with a null in any of its key columns (its rows are dropped)."""
    if not keys:
        return pl.lit(False)
    return pl.any_horizontal([pl.col(a).is_null() for a in key_aliases(keys)])


def centring_shifts(
    n: NDArray[np.float64],
    mean: NDArray[np.float64],
    comoment: NDArray[np.float64],
    centrable: list[bool],
    ratio: float = CENTRING_RATIO,
) -> NDArray[np.float64]:
    """Shifts that centre the variables far from 0; 0.0 where none is needed.

    Means are doubles: a mean of 1e9 carries an error of ~1e-7, large beside
    a spread of 1.  A variable whose ``max |mean|`` exceeds
    ``ratio`` (``CENTRING_RATIO``; ``WEIGHTED_CENTRING_RATIO`` for weighted
    sums) times the smaller of its within-cell and between-cell
    standard deviations is shifted by its overall mean, rounded to a power
    of ten at the scale of the spread (so the shift does not depend on
    summation order), if the model allows (``centrable``).
    """
    total = float(n.sum())
    shifts = np.zeros(mean.shape[1])
    for i in range(mean.shape[1]):
        if not centrable[i]:
            continue
        grand = float(np.dot(n, mean[:, i])) / total
        within = float(comoment[:, i, i].sum()) / total
        between = float(np.dot(n, (mean[:, i] - grand) ** 2)) / total
        spreads = [s for s in (within, between) if s > 0.0]
        if not spreads:
            continue
        spread = float(np.sqrt(min(spreads)))
        if float(np.max(np.abs(mean[:, i]))) <= ratio * spread:
            continue
        quantum = 10.0 ** np.floor(np.log10(spread))
        shifts[i] = float(np.round(grand / quantum) * quantum)
    return shifts


def cell_arrays(
    table: pl.DataFrame, m: int, weighted: bool = False
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Counts, means and co-moments (``var_pop · n``) of the query's rows, as arrays.

    ``weighted``: the weight sums ``W``, weighted means ``Σ w v / W`` and
    weighted co-moments ``Σ w v_i v_j − W v̄_i v̄_j`` (diagonal at least 0).
    """
    if weighted:
        big_w = table["w_sum"].to_numpy().astype(np.float64)
        sums = np.column_stack([table[f"wsum_{i}"].to_numpy() for i in range(m)])
        wmean = sums.astype(np.float64) / big_w[:, None]
        wcom = np.empty((table.height, m, m))
        for i in range(m):
            for j in range(i, m):
                c = table[f"wprod_{i}_{j}"].to_numpy() - big_w * wmean[:, i] * wmean[:, j]
                wcom[:, i, j] = wcom[:, j, i] = np.maximum(c, 0.0) if i == j else c
        return big_w, wmean, wcom
    n = table["n_0"].to_numpy().astype(np.float64)
    mean = np.column_stack([table[f"mean_{i}"].to_numpy() for i in range(m)]).astype(np.float64)
    cov = np.empty((table.height, m, m))
    for i in range(m):
        for j in range(i, m):
            cov[:, i, j] = cov[:, j, i] = table[f"cov_{i}_{j}"].to_numpy()
    return n, mean, cov * n[:, None, None]


@dataclass(frozen=True)
class MomentScan:
    """The usable cells a scan found, and what it did with every row.

    Attributes
    ----------
    good : polars.DataFrame
        The query's rows (:func:`cell_stats_sql`, its own column names) of the cells with usable
        rows: no null key, at least one row, and, when ``finite_only``,
        only the rows whose every variable is finite.
    counts : polars.DataFrame
        One row per file (column ``file``) with ``by``, else one row in all:
        ``read``, ``used`` and one column per entry of ``DROP_REASONS``.
    finite_only : bool
        Whether some value was null, NaN or infinite, so that rows had to be
        left out; a rescan at other shifts must leave them out too.
    """

    good: pl.DataFrame
    counts: pl.DataFrame
    finite_only: bool


def scan_moments(
    source: TableSource,
    keys: tuple[str, ...],
    variables: tuple[NumericVariable, ...],
    shifts: NDArray[np.float64],
    by: str | None = None,
    weight: str | None = None,
) -> MomentScan:
    """Scan at the given shifts; again, keeping the finite rows, only if some value is not.

    Variable 0 is the response.  Rows with a null key, or a null, NaN or
    infinite value in any variable, are dropped and counted by reason, per
    value of ``by`` (the column naming each row's source file) when given.
    """
    m = len(variables)
    multi = m > 1
    table = _run(source, keys, variables, shifts, False, multi, by, weight)
    keyed = table.filter(~null_key(keys))
    complete = keyed.height > 0 and all(
        (keyed[f"n_{i}"] == keyed["n_rows"]).all() for i in range(m)
    )
    moments = (
        [f"wsum_{i}" for i in range(m)] + [f"wprod_{i}_{i}" for i in range(m)]
        if weight is not None
        else [f"mean_{i}" for i in range(m)] + [f"cov_{i}_{i}" for i in range(m)]
    )
    finite = complete and all(keyed[c].is_finite().all() for c in moments)
    good = keyed.filter(pl.col("n_rows") > 0)
    if not finite and keyed.height:
        good = rescan_moments(source, keys, variables, shifts, True, by, weight)
    return MomentScan(good, _row_counts(table, good, keys, multi, by), not finite)


def rescan_moments(
    source: TableSource,
    keys: tuple[str, ...],
    variables: tuple[NumericVariable, ...],
    shifts: NDArray[np.float64],
    finite_only: bool,
    by: str | None = None,
    weight: str | None = None,
) -> pl.DataFrame:
    """One scan at ``shifts``: the usable cells (``MomentScan.good``), no accounting."""
    table = _run(source, keys, variables, shifts, finite_only, by=by, weight=weight)
    return table.filter(~null_key(keys)).filter(pl.col("n_rows") > 0)


def _row_counts(
    table: pl.DataFrame, good: pl.DataFrame, keys: tuple[str, ...], multi: bool, by: str | None
) -> pl.DataFrame:
    """Rows read, used and dropped by reason (``MomentScan.counts``), per file with ``by``."""
    group = FILE_ALIAS if by is not None else "__all"
    if by is None:
        table = table.with_columns(pl.lit(0).alias(group))
        good = good.with_columns(pl.lit(0).alias(group))
    keyed = pl.col("__keyed")
    sums = [
        pl.col("n_rows").sum().alias("read"),
        pl.col("n_rows").filter(keyed).sum().alias("keyed"),
        pl.col("n_0").filter(keyed).sum().alias("non_null"),
    ]
    if multi:
        sums.append(pl.col("n_finite_0").filter(keyed).sum().alias("finite"))
    used = good.group_by(group).agg(pl.col("n_rows").sum().alias("used"))
    counts = (
        table.with_columns((~null_key(keys)).alias("__keyed"))
        .group_by(group)
        .agg(sums)
        .join(used, on=group, how="left")
        .with_columns(pl.col("used").fill_null(0))
    )
    nonfinite = pl.col("non_null") - (pl.col("finite") if multi else pl.col("used"))
    return counts.select(
        group,
        "read",
        "used",
        null_group_key=pl.col("read") - pl.col("keyed"),
        null_response=pl.col("keyed") - pl.col("non_null"),
        nonfinite_response=nonfinite,
        unusable_covariate=pl.col("non_null") - pl.col("used") - nonfinite,
    )


def row_totals(counts: pl.DataFrame) -> dict[str, object]:
    """``read``, ``used`` and ``dropped`` by reason, summed over the rows of ``counts``."""
    total = {c: int(counts[c].sum()) for c in ("read", "used", *DROP_REASONS)}
    return {
        "read": total["read"],
        "used": total["used"],
        "dropped": {r: total[r] for r in DROP_REASONS},
    }


def require_rows(counts: pl.DataFrame, description: str, zero_weight: int = 0) -> None:
    """Raise InputError, naming what was dropped, when ``counts`` has no usable row.

    ``zero_weight``: rows of weight 0, left out before ``counts`` was made.
    """
    if int(counts["used"].sum()) > 0:
        return
    dropped = {r: int(counts[r].sum()) for r in DROP_REASONS}
    dropped["zero_weight"] = zero_weight
    detail = ", ".join(f"{v} with {k.replace('_', ' ')}" for k, v in dropped.items() if v)
    raise InputError(
        f"no usable rows in {description}: {int(counts['read'].sum()) + zero_weight} rows read"
        + (f" ({detail})" if detail else "")
        + "; check the [source] where filter and the model's columns"
    )


def scan_cells(
    source: TableSource,
    keys: tuple[str, ...],
    variables: tuple[NumericVariable, ...],
    weight: str | None = None,
    zero_weight: int = 0,
) -> CellTable:
    """Scan the source once (more only when the data need it) into a CellTable.

    Variable 0 is the response.  Rows with a null key, or a null, NaN or
    infinite value in any variable, are dropped and counted by reason.  A
    second scan is made only if there are such values (keeping the finite
    rows) and a third only if a variable must be centred.  With ``weight``,
    the column of observation weights, already checked
    (:func:`pooljob.scan.weights.scan_weighted_cells`), the cells hold
    weighted moments of the rows with ``w > 0``; ``zero_weight`` rows of
    weight 0 are counted as read and dropped (``zero_weight``).
    """
    weighted = weight is not None
    m = len(variables)
    shifts = np.zeros(m)
    scan = scan_moments(source, keys, variables, shifts, weight=weight)
    rows = row_totals(scan.counts)
    if weighted:
        rows = with_zero_weights(rows, zero_weight)
    require_rows(scan.counts, source.description, zero_weight)
    good = scan.good
    n, mean, comoment = cell_arrays(good, m, weighted)
    centrable = [v.centrable for v in variables]
    ratio = WEIGHTED_CENTRING_RATIO if weighted else CENTRING_RATIO
    new_shifts = centring_shifts(n, mean, comoment, centrable, ratio)
    if np.any(new_shifts != 0.0):
        shifts = new_shifts
        good = rescan_moments(source, keys, variables, shifts, scan.finite_only, weight=weight)
        n, mean, comoment = cell_arrays(good, m, weighted)
    return CellTable(
        keys=key_frame(good, keys),
        n=n,
        mean=mean,
        comoment=comoment,
        shifts=shifts,
        rows=rows,
        count=good["n_0"].to_numpy().astype(np.float64) if weighted else None,
        log_weight=float(good["log_w"].sum()) if weighted else 0.0,
    )


def with_zero_weights(rows: dict[str, object], zero: int) -> dict[str, object]:
    """``rows`` with ``zero`` more rows read, dropped as ``zero_weight`` (weighted models)."""
    dropped, read = rows["dropped"], rows["read"]
    assert isinstance(dropped, dict) and isinstance(read, int)
    return {**rows, "read": read + zero, "dropped": {**dropped, "zero_weight": zero}}
