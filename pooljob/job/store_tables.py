"""The tables of the statistics store of incremental refresh: built from scans, merged.

A store (:mod:`pooljob.scan.store`) keeps one row per source file and one per
file and cell.  This module makes those rows from a per-file scan (the
moments of ``sql/file_cell_stats.sql`` for a gaussian model, the counts of
``sql/file_count_stats.sql`` for a binomial or Poisson one) and merges a
store's rows into the statistics of the whole source, exactly
(:func:`pooljob.scan.merge.merge_moments`,
:func:`pooljob.scan.cell_counts.merge_count_parts`), for
:mod:`pooljob.job.refresh`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.job.fingerprint import FileStamp
from pooljob.model.cells import CellTable, CountTable
from pooljob.scan.cell_counts import (
    COUNT_FAMILIES,
    count_columns,
    count_table,
    covariate_indices,
    keyed_offset,
    merge_count_parts,
)
from pooljob.scan.cell_moments import FILE_ALIAS, cell_arrays, key_aliases, key_frame, row_totals
from pooljob.scan.merge import merge_moments
from pooljob.scan.schema import ScanSpec
from pooljob.scan.store import (
    FILE_INDEX,
    FILE_STATS,
    WEIGHTED_STATS,
    Store,
    count_stat_columns,
    stat_columns,
)

if TYPE_CHECKING:
    from pooljob.job.config import Config


def store_columns(config: Config, spec: ScanSpec) -> list[str]:
    """The statistics columns of the store's cells for the model of ``config``."""
    if config.model.family in COUNT_FAMILIES:
        return count_stat_columns(len(covariate_indices(spec)))
    weighted = list(WEIGHTED_STATS) if config.model.weights is not None else []
    return stat_columns(len(spec.variables)) + weighted


def file_table(stamps: tuple[FileStamp, ...], counts: pl.DataFrame) -> pl.DataFrame:
    """The store's file rows: each file's stamp and its rows (0 for a file with none)."""
    frame = pl.DataFrame(
        [list(s) for s in stamps],
        schema={"path": pl.String, "size": pl.Int64, "mtime_ns": pl.Int64},
        orient="row",
    )
    if "zero_weight" not in counts.columns:  # no observation weights: none is 0
        counts = counts.with_columns(zero_weight=pl.lit(0))
    counts = counts.select("path", *(pl.col(c).cast(pl.Int64) for c in FILE_STATS))
    return frame.join(counts, on="path", how="left").with_columns(
        pl.col(list(FILE_STATS)).fill_null(0)
    )


def moment_parts(
    good: pl.DataFrame,
    keys: tuple[str, ...],
    m: int,
    paths: list[str],
    weights: str | None = None,
) -> pl.DataFrame:
    """The store's cell rows from the per-file query's usable rows, sorted by file.

    A part's file becomes its position in ``paths`` (the cast to an Enum of
    the paths is that lookup, and fails on a path not in the list).  The key
    columns keep the query's names (``k<i>``): the store's columns are all
    pooljob's own.  ``weights``: the store is weighted, and ``good`` came
    from the weighted query (``"w_sum"`` in it) or, for files whose weights
    are all 1, the unweighted one (then rows = ``Σ w`` and ``Σ log w`` = 0).
    """
    weighted = "w_sum" in good.columns
    n, mean, comoment = cell_arrays(good, m, weighted)
    values = [n, *(mean[:, i] for i in range(m))]
    values += [comoment[:, i, j] for i in range(m) for j in range(i, m)]
    names = stat_columns(m)
    if weights is not None:
        names += list(WEIGHTED_STATS)
        values.append(good["n_0"].to_numpy().astype(np.float64))
        values.append(good["log_w"].to_numpy() if weighted else np.zeros(good.height))
    stats = [pl.Series(name, v) for name, v in zip(names, values, strict=True)]
    index = pl.col(FILE_ALIAS).cast(pl.Enum(paths)).to_physical().cast(pl.UInt32)
    frame = good.select(index.alias(FILE_INDEX), *key_aliases(keys)).with_columns(stats)
    return frame.sort(FILE_INDEX, maintain_order=True)


def merge_parts(
    parts: pl.DataFrame,
    keys: tuple[str, ...],
    m: int,
    shifts: NDArray[np.float64],
    rows: dict[str, object],
) -> CellTable:
    """The cells of the whole source from per-file cells (:func:`merge_moments`).

    Cells come in sorted key order; each cell's parts are summed in the
    order of ``parts`` (by file), so equal parts give equal bits.
    """
    columns = stat_columns(m)
    n = parts[columns[0]].to_numpy().astype(np.float64)
    mean = np.column_stack([parts[c].to_numpy() for c in columns[1 : m + 1]]).reshape(-1, m)
    comoment = np.empty((parts.height, m, m))
    pairs = [(i, j) for i in range(m) for j in range(i, m)]
    for (i, j), c in zip(pairs, columns[m + 1 :], strict=True):
        comoment[:, i, j] = comoment[:, j, i] = parts[c].to_numpy()
    aliases = key_aliases(keys)  # the store's names of the key columns: k0, k1, …
    part_keys = parts.select(aliases)
    if keys:
        cell_keys = part_keys.unique().sort(aliases)
        coded = part_keys.join(
            cell_keys.with_row_index("__cell"), on=aliases, how="left", maintain_order="left"
        )
        codes = coded["__cell"].to_numpy().astype(np.int64)
        size = cell_keys.height
    else:  # no key column: one cell, the whole source (a frame of no columns)
        cell_keys = part_keys
        codes = np.zeros(parts.height, dtype=np.int64)
        size = 1 if parts.height else 0
    total, merged_mean, merged = merge_moments(codes, size, n, mean.astype(np.float64), comoment)
    weighted = WEIGHTED_STATS[0] in parts.columns
    return CellTable(
        keys=key_frame(cell_keys, keys),
        n=total,
        mean=merged_mean,
        comoment=merged,
        shifts=np.asarray(shifts, dtype=np.float64),
        rows=rows,
        count=(
            np.bincount(codes, parts[WEIGHTED_STATS[0]].to_numpy(), minlength=size).astype(
                np.float64
            )
            if weighted
            else None
        ),
        log_weight=float(parts[WEIGHTED_STATS[1]].sum()) if weighted else 0.0,
    )


def count_parts(good: pl.DataFrame, spec: ScanSpec, paths: list[str]) -> pl.DataFrame:
    """The store's cell rows from the per-file count query's used cells, sorted by file.

    As :func:`moment_parts`: a part's file becomes its position in ``paths``;
    the key columns keep the query's names (``k<i>``), the counts are named
    ``__<name>`` (:func:`pooljob.scan.store.count_stat_columns`).
    """
    covariates = len(covariate_indices(spec))
    index = pl.col(FILE_ALIAS).cast(pl.Enum(paths)).to_physical().cast(pl.UInt32)
    stats = [
        pl.col(c).cast(pl.Float64).alias(name)
        for c, name in zip(count_columns(covariates), count_stat_columns(covariates), strict=True)
    ]
    frame = good.select(index.alias(FILE_INDEX), *key_aliases(spec.keys), *stats)
    return frame.sort(FILE_INDEX, maintain_order=True)


def merged(store: Store, config: Config, spec: ScanSpec) -> CellTable | CountTable:
    """The store's cells merged over its files, with its row accounting summed.

    For a count model the merged counts are checked as a scan's are
    (:func:`pooljob.scan.cell_counts.count_table`); a cell's covariate values
    are part of its key, so the cells of different files with the same
    keys and values merge into one, as a scan of every file makes them.
    """
    rows = row_totals(store.files)
    if config.model.weights is not None:
        dropped = rows["dropped"]
        assert isinstance(dropped, dict)
        rows["dropped"] = {**dropped, "zero_weight": int(store.files["zero_weight"].sum())}
    if config.model.family not in COUNT_FAMILIES:
        m = len(spec.variables)
        return merge_parts(store.cells, spec.keys, m, store.shifts, rows)
    covariates = len(covariate_indices(spec))
    parts = store.cells.rename(
        dict(zip(count_stat_columns(covariates), count_columns(covariates), strict=True))
    )
    family = config.model.family
    offset = keyed_offset(config.model.formula, family)
    cells = merge_count_parts(parts, spec.keys, covariates, offset)
    return count_table(cells, config.model.formula, family, spec, rows)
