"""Incremental refresh: per-file statistics kept between runs, merged, refitted.

A run on ``[source] path`` files keeps the cell statistics of every source
file separately (``sql/file_cell_stats.sql``; ``sql/file_count_stats.sql``
for a binomial or Poisson model), with the file's stamp (path, size, mtime;
an S3 object's ETag), in a store under ``<output.path>/state/``
(:mod:`pooljob.scan.store`; :mod:`pooljob.scan.s3_store` under an S3
prefix).  The next run compares the stamps with the files the
path matches now: it scans only the files that are new or changed, drops
the statistics of changed and deleted files, and merges every file's
statistics into the cells of the whole source
(:func:`pooljob.scan.merge.merge_moments`; counts and sums add, the
covariates' extremes merge by min and max: exact).  The fit then runs from the
merged cells as from a scan.  A hive partition is tracked as the files in it.

The run scans every file and rebuilds the store instead (mode ``full``, the
reason in the log and the manifest) when asked (``pooljob run --full``), when
there is no store, or when the store cannot serve the run: unreadable or
damaged, written by another pooljob version, for another formula, source
path or ``where`` filter, for a source whose columns or types have changed,
or centred at shifts that no longer centre the data (a merge needs every
file's statistics at the same shifts).  Sources that are not local files
(a database, a query, a remote path other than ``s3://``), the Spark engine and
``[output] incremental = false`` scan in one pass and keep no store.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.errors import PooljobError
from pooljob.job.fingerprint import InputSnapshot
from pooljob.job.logs import log_event
from pooljob.job.progress import current
from pooljob.job.store_tables import (
    count_parts,
    file_table,
    merge_parts,
    merged,
    moment_parts,
    store_columns,
)
from pooljob.model.cells import CellTable, CountTable
from pooljob.outputs.tables import FitResult
from pooljob.pipeline import UNWATCHED, Watch, fit_cells, fit_count_table
from pooljob.scan.cell_counts import COUNT_FAMILIES, scan_count_parts, scan_counts
from pooljob.scan.cell_moments import (
    CENTRING_RATIO,
    FILE_ALIAS,
    WEIGHTED_CENTRING_RATIO,
    centring_shifts,
    file_column,
    require_rows,
    rescan_moments,
    scan_cells,
    scan_moments,
)
from pooljob.scan.s3_store import fetch_store, push_store
from pooljob.scan.schema import ScanSpec, check_schema
from pooljob.scan.source import TableSource, open_file_list
from pooljob.scan.store import (
    FILE_INDEX,
    FILE_STAMP,
    STORE_FORMAT,
    Store,
    UnusableStoreError,
    load_store,
    save_store,
)
from pooljob.scan.weights import (
    check_file_weights,
    scan_weighted_cells,
    scan_weighted_counts,
    with_file_zero_weights,
)

if TYPE_CHECKING:
    from pooljob.job.config import Config

_LISTED = 100  # file names per list in a log record's fields


@dataclass(frozen=True)
class Refresh:
    """How a run came by its statistics: for the log, the manifest, and the store.

    Attributes
    ----------
    mode : {"incremental", "full"}
    reason : str
        Why every file was scanned ("" for an incremental run).
    scanned, reused, removed : int
        Files scanned, files whose stored statistics were used, files
        dropped from the store (changed or deleted: a changed file is both
        removed and scanned).
    pending : Store or None
        The store to save once the run is published (None: keep the old one).
    """

    mode: str
    reason: str = ""
    scanned: int = 0
    reused: int = 0
    removed: int = 0
    pending: Store | None = field(default=None, repr=False)

    def manifest(self) -> dict[str, Any]:
        """The manifest's ``refresh`` entry."""
        entry: dict[str, Any] = {
            "mode": self.mode,
            "files_scanned": self.scanned,
            "files_reused": self.reused,
            "files_removed": self.removed,
        }
        if self.reason:
            entry["reason"] = self.reason
        return entry

    def save(self, output: Path, run_id: str, url: str | None = None) -> None:
        """Save the pending store (after the run is published); a failure is a warning.

        For an S3 output (``url``), ``output`` is its local work folder: the
        store is saved there, then uploaded under ``<url>/state/``.
        """
        if self.pending is None:
            return
        t0 = time.perf_counter()
        try:
            path = save_store(output, run_id, self.pending)
            if url is not None:
                push_store(url, output)
        except (OSError, PooljobError, pl.exceptions.PolarsError) as exc:
            log_event(
                "state",
                "state: the statistics store could not be saved (%s); the run is published, "
                "and the next run refreshes from the previous store or rebuilds it",
                getattr(exc, "strerror", None) or exc,
                level=logging.WARNING,
                error=type(exc).__name__,
            )
            return
        seconds = time.perf_counter() - t0
        log_event(
            "state",
            "state: statistics of %d files (%d cells) saved to %s (%.3f s)",
            self.pending.files.height,
            self.pending.cells.height,
            path.parent,
            seconds,
            stage="state",
            seconds=round(seconds, 6),
            files=self.pending.files.height,
            cells=self.pending.cells.height,
        )


def fit_refreshed(
    config: Config,
    source: TableSource,
    snap: InputSnapshot,
    full: bool = False,
    watch: Watch = UNWATCHED,
) -> tuple[FitResult, Refresh]:
    """Fit the model of ``config``, from the store and the changed files when possible.

    Parameters
    ----------
    config : Config
    source : TableSource
        The whole source, open (its schema decides the store's identity).
    snap : InputSnapshot
        The input's stamps, taken before ``source`` was opened.
    full : bool
        Scan every file and rebuild the store (``pooljob run --full``).
    watch : Watch
        Told of the stages (scan, fit, tables) and the fit's evaluations.
    """
    t0 = time.perf_counter()
    formula = config.model.formula
    family = config.model.family
    variance = config.model.sampling_variance
    if variance is not None:  # an area-level model reads its areas: no statistics store
        from pooljob.pipeline import fit_area_source

        reason = "an area-level model (sampling_variance) reads its areas (no statistics store)"
        log_event("refresh", "refresh: full scan: %s", reason, mode="full")
        interval, method = config.output.interval, config.model.method
        result = fit_area_source(formula, source, variance, method, interval, config.control, watch)
        return result, Refresh("full", reason, scanned=len(snap.files))
    spec = check_schema(source, formula, family)
    with watch.stage("scan"):
        cells, refresh = refresh_cells(config, source, spec, snap, full)
    if isinstance(cells, CountTable):
        result = fit_count_table(
            formula,
            cells,
            spec,
            family,
            config.output.interval,
            config.control,
            scan_seconds=time.perf_counter() - t0,
            watch=watch,
        )
        if config.model.weights is not None:
            result = replace(result, weights=config.model.weights)
        return result, refresh
    result = fit_cells(
        formula,
        cells,
        spec,
        config.model.family,
        config.model.method,
        config.output.interval,
        source.description,
        scan_seconds=time.perf_counter() - t0,
        solver=config.model.pipeline_solver,
        control=config.control,
        watch=watch,
    )
    if config.model.weights is not None:
        result = replace(result, weights=config.model.weights)
    return result, refresh


def _without_store(config: Config, source: TableSource, snap: InputSnapshot) -> str:
    """Why this run keeps no store ("" if it does)."""
    if not config.output.incremental:
        return "[output] incremental = false"
    if config.engine.kind != "duckdb":
        return f"incremental refresh runs on DuckDB, not [engine] kind = {config.engine.kind!r}"
    if snap.kind != "files":
        what = {"database": "a database table", "query": "a query", "remote": "remote files"}
        return (
            f"the source is {what.get(snap.kind, snap.kind)}; incremental refresh needs files "
            "(local, or objects on S3)"
        )
    return ""


def refresh_cells(
    config: Config, source: TableSource, spec: ScanSpec, snap: InputSnapshot, full: bool = False
) -> tuple[CellTable | CountTable, Refresh]:
    """The cell statistics of the whole source, and how they were obtained.

    Moments (a CellTable) for a gaussian model, counts (a CountTable) for a
    binomial or Poisson one.  Incremental when a store can serve the run
    (module docstring); otherwise every file is scanned and, for local
    files, the store rebuilt.  Logs one ``refresh`` record saying which.
    """
    reason = _without_store(config, source, snap)
    if reason:
        log_event("refresh", "refresh: full scan, no statistics store: %s", reason, mode="full")
        family = config.model.family
        cells: CellTable | CountTable
        if family in COUNT_FAMILIES and config.model.weights is not None:
            weights = config.model.weights
            cells = scan_weighted_counts(source, config.model.formula, family, spec, weights)
        elif family in COUNT_FAMILIES:
            cells = scan_counts(source, config.model.formula, family, spec)
        elif config.model.weights is not None:
            cells = scan_weighted_cells(source, spec.keys, spec.variables, config.model.weights)
        else:
            cells = scan_cells(source, spec.keys, spec.variables)
        return cells, Refresh("full", reason, scanned=len(snap.files))
    identity = _identity(config, spec, source.columns)
    if full:
        reason = "pooljob run --full"
    else:
        try:
            url = config.output.url
            problem = fetch_store(url, config.output.path) if url else ""
            if problem:
                raise UnusableStoreError(problem)
            store = load_store(config.output.path, identity, store_columns(config, spec))
            return _incremental(config, source, spec, snap, store)
        except UnusableStoreError as exc:
            reason = str(exc)
    log_event(
        "refresh",
        "refresh: full scan of %d files, statistics store rebuilt: %s",
        len(snap.files),
        reason,
        mode="full",
        reason=reason,
        files_scanned=len(snap.files),
    )
    rebuilt, store = _rebuild(config, source, spec, snap, identity)
    return rebuilt, Refresh("full", reason, scanned=len(snap.files), pending=store)


def _identity(config: Config, spec: ScanSpec, columns: dict[str, str]) -> dict[str, Any]:
    """What the statistics are; a store serves a run only with equal identity."""
    try:
        version = metadata.version("pooljob")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare source tree
        version = "unknown"
    return {
        "format": STORE_FORMAT,
        "pooljob": version,
        "source": config.source.path,
        "where": config.source.where or "",
        "formula": config.model.formula.text,
        "family": config.model.family,
        "weights": config.model.weights,
        "keys": list(spec.keys),
        "variables": [[list(v.columns), v.centrable] for v in spec.variables],
        "columns": dict(columns),
    }


def _scan_files(
    config: Config,
    source: TableSource,
    spec: ScanSpec,
    scan: list[str],
    paths: list[str],
    shifts: NDArray[np.float64] | None,
) -> tuple[pl.DataFrame, pl.DataFrame, NDArray[np.float64]]:
    """Per-file cells and row counts of the files ``scan``; ``shifts`` None: choose them.

    ``paths`` (sorted) are the files of the store being made: a part's
    ``__file_index`` is its file's position there.  Returns the cells (the
    store's layout, sorted by file), the per-file row counts (by ``path``),
    and the shifts the means are taken about (0 for counts).
    """
    m = len(spec.variables)
    assert config.source.path is not None
    by = file_column(source.columns)  # a name no column of the source has
    with (
        open_file_list(
            scan,
            path=config.source.path,
            columns=source.columns,
            file_column=by,
            where=config.source.where,
            threads=config.engine.threads,
            memory_limit=config.engine.memory_limit,
            search_path=config.source.folder,
            progress=current().terminal,
        ) as files,
        current().probing(files.query_progress, len(scan)),
    ):
        family = config.model.family
        weights, zero = config.model.weights, None
        if weights is not None:  # checked first; files of weights all 1 scan unweighted
            zero = check_file_weights(files, weights, by)
            if int(zero["not_one"].sum()) == 0:
                weights = None
        if family in COUNT_FAMILIES:
            formula = config.model.formula
            good, counts = scan_count_parts(files, formula, family, spec, by, weights)
            if zero is not None:
                counts = with_file_zero_weights(counts, zero)
            if shifts is None:
                require_rows(counts, source.description)
            return count_parts(good, spec, paths), counts.rename({FILE_ALIAS: "path"}), np.zeros(m)
        at = np.zeros(m) if shifts is None else shifts
        scanned = scan_moments(files, spec.keys, spec.variables, at, by=by, weight=weights)
        store_weights = config.model.weights
        parts = moment_parts(scanned.good, spec.keys, m, paths, store_weights)
        if shifts is None:  # a rebuild: centre as a scan of every file would
            require_rows(
                scanned.counts,
                source.description,
                0 if zero is None else int(zero["zero_weight"].sum()),
            )
            whole = merge_parts(parts, spec.keys, m, at, {})
            centrable = [v.centrable for v in spec.variables]
            at = centring_shifts(whole.n, whole.mean, whole.comoment, centrable, _ratio(whole))
            if np.any(at != 0.0):
                good = rescan_moments(
                    files, spec.keys, spec.variables, at, scanned.finite_only, by, weights
                )
                parts = moment_parts(good, spec.keys, m, paths, store_weights)
    counts = scanned.counts
    if zero is not None:  # the rows of weight 0 are read, and dropped
        counts = with_file_zero_weights(counts, zero)
    return parts, counts.rename({FILE_ALIAS: "path"}), at


def _rebuild(
    config: Config,
    source: TableSource,
    spec: ScanSpec,
    snap: InputSnapshot,
    identity: dict[str, Any],
) -> tuple[CellTable | CountTable, Store]:
    """Scan every file: the merged cells and the new store."""
    paths = [p for p, _, _ in snap.files]
    parts, counts, shifts = _scan_files(config, source, spec, paths, paths, None)
    store = Store(identity, shifts, file_table(snap.files, counts), parts)
    return merged(store, config, spec), store


def _incremental(
    config: Config, source: TableSource, spec: ScanSpec, snap: InputSnapshot, store: Store
) -> tuple[CellTable | CountTable, Refresh]:
    """Scan the new and changed files only, and merge them with the store's others.

    Raises
    ------
    UnusableStoreError
        When the store's shifts no longer centre the data, or the scanned
        key columns do not fit the stored ones.
    """
    stamps = {p: (size, mtime) for p, size, mtime in snap.files}
    old = store.files.select(FILE_STAMP).rows()
    stored = {p: (size, mtime) for p, size, mtime in old}
    new = sorted(p for p in stamps if p not in stored)
    changed = sorted(p for p in stamps if p in stored and stored[p] != stamps[p])
    removed = sorted(p for p in stored if p not in stamps)
    dropped = set(changed) | set(removed)
    scan = sorted(new + changed)
    paths = [p for p, _, _ in snap.files]  # sorted: the new store's files
    position = {p: i for i, p in enumerate(paths)}
    remap = np.array([-1 if p in dropped else position[p] for p, _, _ in old], dtype=np.int64)
    kept = np.flatnonzero(remap >= 0)
    files = store.files[kept]
    parts = store.cells.filter(pl.col(FILE_INDEX).is_in(kept.tolist()))
    parts = parts.with_columns(
        pl.Series(FILE_INDEX, remap[parts[FILE_INDEX].to_numpy()], dtype=pl.UInt32)
    )
    if scan:
        new_parts, counts, _ = _scan_files(config, source, spec, scan, paths, store.shifts)
        scanned = set(scan)
        new_files = file_table(tuple(s for s in snap.files if s[0] in scanned), counts)
        try:
            parts = pl.concat([parts, new_parts.cast(parts.schema)])
            files = pl.concat([files, new_files.cast(files.schema)])
        except pl.exceptions.PolarsError as exc:
            raise UnusableStoreError(
                f"the new files' columns do not fit the store's ({exc})"
            ) from None
    updated = Store(
        store.identity,
        store.shifts,
        files.sort("path"),
        parts.sort(FILE_INDEX, maintain_order=True),
    )
    require_rows(updated.files, source.description)
    cells = merged(updated, config, spec)
    centrable = [v.centrable for v in spec.variables]
    if isinstance(cells, CellTable) and np.any(
        centring_shifts(cells.n, cells.mean, cells.comoment, centrable, _ratio(cells)) != 0.0
    ):
        raise UnusableStoreError(
            "the stored centring shifts no longer centre the data (a variable's mean moved "
            "far from them beside its spread)"
        )
    reused = len(stamps) - len(scan)
    log_event(
        "refresh",
        "refresh: incremental: %s; %d files reused (store of run %s)",
        _summary(new, changed, removed),
        reused,
        store.run_id,
        mode="incremental",
        new=new[:_LISTED],
        changed=changed[:_LISTED],
        deleted=removed[:_LISTED],
        files_scanned=len(scan),
        files_reused=reused,
        files_removed=len(dropped),
        store_run_id=store.run_id,
    )
    refresh = Refresh(
        "incremental",
        scanned=len(scan),
        reused=reused,
        removed=len(dropped),
        pending=updated if scan or removed else None,
    )
    return cells, refresh


def _ratio(cells: CellTable) -> float:
    """The centring ratio of ``cells``: tighter for weighted sums (their raw sums cancel)."""
    return CENTRING_RATIO if cells.count is None else WEIGHTED_CENTRING_RATIO


def _summary(new: list[str], changed: list[str], removed: list[str]) -> str:
    """``1 new (a), 0 changed, 2 deleted (b, c)``: counts, and the first few names."""

    def part(label: str, paths: list[str]) -> str:
        if not paths:
            return f"0 {label}"
        names = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        return f"{len(paths)} {label} ({names})"

    return ", ".join([part("new", new), part("changed", changed), part("deleted", removed)])
