"""A job run: config → one scan → fit → Parquet outputs and manifest, published atomically."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from pooljob.errors import ConfigError, PublishError
from pooljob.job.config import Config
from pooljob.job.engine import open_source
from pooljob.job.fingerprint import InputSnapshot, check_unchanged, fingerprint, snapshot
from pooljob.job.lock import output_lock
from pooljob.job.logs import log_context, log_event
from pooljob.job.progress import Progress
from pooljob.job.refresh import Refresh, fit_refreshed
from pooljob.outputs.benchmark import BenchmarkTables, benchmark_estimates, read_benchmark
from pooljob.outputs.delta import check_layout, publish_delta, require_deltalake
from pooljob.outputs.poststratify import poststratify, read_population, require_population
from pooljob.outputs.predict import predict, read_cells, require_cells
from pooljob.outputs.publish import new_run_id, publish
from pooljob.outputs.report import REPORT, write_report
from pooljob.outputs.report_figures import require_matplotlib
from pooljob.outputs.s3_publish import publish_s3
from pooljob.outputs.schema import SCHEMA_VERSION, write_table
from pooljob.outputs.tables import FitResult
from pooljob.pipeline import UNWATCHED, Watch
from pooljob.scan.s3 import require_bucket
from pooljob.scan.source import TableSource

log = logging.getLogger("pooljob")

OUTPUT_TABLES = ("estimates", "effects", "coefficients", "components")
#: The table ``[poststratify]`` adds.
POSTSTRATIFIED = "poststratified"
#: The table ``[predict]`` adds.
PREDICTIONS = "predictions"
_PACKAGES = ("pooljob", "duckdb", "polars", "numpy", "pyarrow")


@dataclass(frozen=True)
class RunOutcome:
    """What a successful run produced."""

    run_id: str
    run_dir: Path | str  # the URL of the run for an S3 output
    result: FitResult
    manifest: dict[str, Any]
    poststratified: pl.DataFrame | None = None
    predictions: pl.DataFrame | None = None


@functools.cache
def versions() -> dict[str, str]:
    """Versions of Python and of the packages that produced the numbers."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def build_manifest(
    config: Config,
    result: FitResult,
    run_id: str,
    started: float,
    timings: dict[str, float],
    input_fingerprint: dict[str, Any] | None = None,
    refresh: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest: the fit's numbers, row accounting, input, config, versions, timings."""

    def suffix(table: str) -> str:  # a Parquet file, or a Delta table (a folder)
        return f"{table}.parquet" if config.output.format == "parquet" else table

    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        **result.summary(),
        "input_fingerprint": input_fingerprint,
        "refresh": refresh,
        "components": result.components.to_dicts(),
        "coefficients": result.coefficients.to_dicts(),
        "format": config.output.format,
        "outputs": [suffix(name) for name in OUTPUT_TABLES]
        + ([suffix(POSTSTRATIFIED)] if config.poststratify is not None else [])
        + ([suffix(PREDICTIONS)] if config.predict is not None else [])
        + ([REPORT] if config.output.report else []),
        "config": config.raw,
        "config_file": str(config.file),
        "versions": dict(versions()),
        "timings_seconds": timings,
        "started_at": _iso(started),
        "finished_at": _iso(time.time()),
    }


#: Why a rollup is always scanned in full.
ROLLUP_FULL = (
    "[model] rollup: a rollup table is scanned in full (it is already one row per cell or "
    "finer, so a full scan is cheap; no statistics store)"
)


def fit_rollup(
    config: Config, source: TableSource, snap: InputSnapshot, watch: Watch = UNWATCHED
) -> tuple[FitResult, Refresh]:
    """Fit from a rollup table: always one full scan, no store (the reason is logged)."""
    from pooljob.pipeline import fit_source

    log_event("refresh", "refresh: full scan, no statistics store: %s", ROLLUP_FULL, mode="full")
    m = config.model
    result = fit_source(
        m.formula,
        source,
        m.family,
        m.method,
        config.output.interval,
        solver=m.pipeline_solver,
        control=config.control,
        rollup=m.rollup,
        watch=watch,
    )
    counts: dict[str, Any] = result.rows["rollup_rows"]
    dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts["dropped"].items() if v)
    log_event(
        "rollup",
        "rollup: %d rollup rows read, %d used%s",
        counts["read"],
        counts["used"],
        f"; dropped {dropped}" if dropped else "",
        rollup_rows_read=counts["read"],
        rollup_rows_used=counts["used"],
        rollup_rows_dropped=counts["dropped"],
    )
    return result, Refresh("full", ROLLUP_FULL, scanned=len(snap.files))


def _stage(name: str, seconds: float) -> dict[str, Any]:
    """The structured fields of a stage's log record."""
    return {"stage": name, "seconds": round(seconds, 6)}


@dataclass
class _Clock:
    seconds: float = 0.0


@contextmanager
def _timed(watch: Progress, name: str, timings: dict[str, float]) -> Iterator[_Clock]:
    """Run a post-fit stage under ``watch``; its seconds go to ``timings[name]`` and the clock."""
    clock, t0 = _Clock(), time.perf_counter()
    with watch.stage(name):
        yield clock
    clock.seconds = timings[name] = time.perf_counter() - t0


def _how(result: FitResult, draws: int) -> str:
    """How a poststratified or predicted table's intervals are made, for its log line.

    They are plug-in (θ at its estimate) whatever ``interval_method``, which
    widens the estimates only: said when it is ``"prasad-rao"``.
    """
    how = "exact normal posterior" if result.family == "gaussian" else f"{draws} draws"
    if result.interval_method != "plugin":
        how += (
            f" (plug-in intervals: interval_method = {result.interval_method!r} is for estimates)"
        )
    return how


def _poststratify(config: Config, result: FitResult, watch: Progress) -> pl.DataFrame | None:
    """The poststratified table of ``[poststratify]`` (None without the section)."""
    post = config.poststratify
    if post is None:
        return None
    if result.predictor is None:
        raise ConfigError(
            "[poststratify] does not apply to an area-level (Fay–Herriot) model: it has no "
            "unit-level predictions to weight"
        )
    with _timed(watch, "poststratify", result.timings) as clock:
        table, _, _ = read_population(result.predictor, post)
        out = poststratify(result.predictor, post, config.output.interval, table)
    seconds = clock.seconds
    log_event(
        "poststratify",
        "poststratify: %d population cells, %d groups, %s (%.3f s)",
        table.height,
        out.height,
        _how(result, post.draws),
        seconds,
        **_stage("poststratify", seconds),
    )
    return out


def _benchmark(
    config: Config, result: FitResult, tables: BenchmarkTables | None, watch: Progress
) -> FitResult:
    """The fit with its estimates benchmarked as ``[benchmark]`` says (as it is without)."""
    section = config.benchmark
    if section is None or tables is None:
        return result
    with _timed(watch, "benchmark", result.timings) as clock:
        estimates, record = benchmark_estimates(
            result.estimates, result.key_columns, result.hierarchy, section, tables
        )
    seconds = clock.seconds
    result = dataclasses.replace(result, estimates=estimates, benchmarked=record)
    log_event(
        "benchmark",
        "benchmark: %s within %s, %s, %d groups, adjustment %.6g to %.6g (%.3f s)",
        ", ".join(record["groupings"]),
        ", ".join(section.by),
        section.method,
        len(record["groups"]),
        record["adjustment_min"] if record["adjustment_min"] is not None else float("nan"),
        record["adjustment_max"] if record["adjustment_max"] is not None else float("nan"),
        seconds,
        **_stage("benchmark", seconds),
    )
    return result


def _predict(config: Config, result: FitResult, watch: Progress) -> pl.DataFrame | None:
    """The predictions table of ``[predict]`` (None without the section)."""
    section = config.predict
    if section is None:
        return None
    if result.predictor is None:
        raise ConfigError(
            "[predict] does not apply to an area-level (Fay–Herriot) model: it has no "
            "unit-level predictions"
        )
    with _timed(watch, "predict", result.timings) as clock:
        table = read_cells(result.predictor, section)
        out = predict(result.predictor, section, config.output.interval, table)
    seconds = clock.seconds
    log_event(
        "predict",
        "predict: %d cells, %d with unseen levels, %s (%.3f s)",
        out.height,
        out.height - out["unseen"].null_count(),
        _how(result, section.draws),
        seconds,
        **_stage("predict", seconds),
    )
    return out


def _publish_delta(
    config: Config,
    run_id: str,
    tables: dict[str, pl.DataFrame],
    make_manifest: Callable[[float], dict[str, Any]],
    watch: Progress,
) -> Path | str:
    """Publish the tables as Delta versions and record the run in ``runs``; the output path."""
    t_w = time.perf_counter()
    with watch.stage("publish"):
        done = publish_delta(
            config.output.url or config.output.path,
            run_id,
            tables,
            lambda: make_manifest(t_w),
            config.output.keep_runs,
        )
    t_pub = time.perf_counter() - t_w
    log_event(
        "publish",
        "publish: Delta tables %s, run %d in runs (%.3f s)",
        ", ".join(f"{name} v{version}" for name, version in done.tables.items()),
        done.sequence,
        t_pub,
        **_stage("publish", t_pub),
        delta_versions=done.tables,
        sequence=done.sequence,
    )
    return config.output.url or config.output.path


def run(config: Config, progress: Progress | bool = False, full: bool = False) -> RunOutcome:
    """Run the job described by ``config`` and publish its outputs.

    Holds the output lock throughout; fails with SourceChangedError (nothing
    published) if a source file is written, added or removed during the scan.
    ``progress`` shows what the run is doing as it goes
    (:mod:`pooljob.job.progress`: a status line on a terminal, stage events
    in JSON logs; True: the status line on stderr).
    A path source is refreshed incrementally from the statistics store under
    ``<output>/state/`` (:mod:`pooljob.job.refresh`), saved once the run is
    published; ``full`` scans every file and rebuilds the store.
    """
    started = time.time()
    t0 = time.perf_counter()
    if not isinstance(progress, Progress):
        progress = Progress("terminal" if progress else "off")
    watch = progress
    run_id = new_run_id()
    src = config.source
    if config.output.report:
        require_matplotlib()  # fail before the scan, not after the fit
    if config.output.url:
        require_bucket(config.output.url, PublishError)
    if config.poststratify is not None:
        require_population(config.poststratify)
    if config.predict is not None:
        require_cells(config.predict)
    bench = None  # read and checked before the scan: a bad table fails at once
    if config.benchmark is not None:
        bench = read_benchmark(config.benchmark, config.model.formula.groupings)
    if config.engine.kind == "spark":
        from pooljob.scan.spark import require_spark

        require_spark()
    if config.output.format == "delta":
        require_deltalake()
    with output_lock(config.output.path, run_id), log_context(run_id=run_id), watch.running():
        check_layout(config.output.url or config.output.path, config.output.format)
        what = src.path or src.table or "query"
        log_event("start", "run %s: reading %s", run_id, what, source=what)
        before = snapshot(src)
        with (
            # not Spark's console bar: it would redraw stderr's line under the status line
            open_source(
                config, progress=watch.terminal and config.engine.kind == "duckdb"
            ) as source,
            watch.probing(getattr(source, "query_progress", None)),
        ):
            t_open = time.perf_counter()
            log_event(
                "open",
                "open: %s (%.3f s)",
                source.description,
                t_open - t0,
                **_stage("open", t_open - t0),
            )
            if config.model.rollup is not None:
                result, refresh = fit_rollup(config, source, before, watch)
            else:
                result, refresh = fit_refreshed(config, source, before, full, watch)
        check_unchanged(before, snapshot(src))
        result = _benchmark(config, result, bench, watch)
        poststratified = _poststratify(config, result, watch)
        predictions = _predict(config, result, watch)
        rows = result.rows
        dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in rows["dropped"].items() if v)
        log_event(
            "scan",
            "scan: %d rows read, %d used%s (%.3f s)",
            rows["read"],
            rows["used"],
            f"; dropped {dropped}" if dropped else "",
            result.timings["scan"],
            **_stage("scan", result.timings["scan"]),
            rows_read=rows["read"],
            rows_used=rows["used"],
            dropped=rows["dropped"],
        )
        log_event(
            "fit",
            "fit: %s %s, objective %.6f, %s%s (%d evaluations, %.3f s)",
            config.model.method.upper(),
            config.model.formula.text,
            result.objective,
            "converged" if result.converged else "NOT converged",
            ", singular" if result.singular else "",
            result.optimizer["evaluations"],
            result.timings["fit"],
            **_stage("fit", result.timings["fit"]),
            objective=result.summary()["objective"],
            converged=result.converged,
            singular=result.singular,
            evaluations=result.optimizer["evaluations"],
        )
        t_tables = result.timings.get("tables", 0.0)
        log_event("tables", "tables: built (%.3f s)", t_tables, **_stage("tables", t_tables))
        timings = {"open": t_open - t0, **result.timings}
        input_fingerprint = fingerprint(before)

        tables = {name: getattr(result, name) for name in OUTPUT_TABLES}
        if poststratified is not None:
            tables[POSTSTRATIFIED] = poststratified
        if predictions is not None:
            tables[PREDICTIONS] = predictions
        manifest: dict[str, Any] = {}

        def make_manifest(t_w: float) -> dict[str, Any]:
            timings["write"] = time.perf_counter() - t_w
            timings["total"] = time.perf_counter() - t0
            manifest.update(
                build_manifest(
                    config, result, run_id, started, timings, input_fingerprint, refresh.manifest()
                )
            )
            return manifest

        def write(directory: Path) -> None:
            t_w = time.perf_counter()
            with watch.stage("write"):
                for name, table in tables.items():
                    write_table(table, directory / f"{name}.parquet", run_id, name)
                make_manifest(t_w)
                (directory / "manifest.json").write_text(
                    json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8"
                )
            t_write = time.perf_counter() - t_w
            log_event("write", "write: %s (%.3f s)", directory, t_write, **_stage("write", t_write))
            if config.output.report:  # inside the partial run: a failed report publishes nothing
                t_r = time.perf_counter()
                with watch.stage("report"):
                    write_report(directory, config.output.report_grouping)
                log.info("report: %s (%.3f s)", REPORT, time.perf_counter() - t_r)

        written: list[float] = []

        def write_all(directory: Path) -> None:
            write(directory)
            written.append(time.perf_counter())
            stages.enter_context(watch.stage("publish"))  # ends when publish returns

        if config.output.format == "delta":
            run_dir: Path | str = _publish_delta(config, run_id, tables, make_manifest, watch)
        else:
            with ExitStack() as stages:
                out, keep = config.output, config.output.keep_runs
                run_dir = (
                    publish_s3(out.url, out.path, run_id, write_all, keep)
                    if out.url
                    else publish(out.path, run_id, write_all, keep)
                )
            t_pub = time.perf_counter() - written[0]  # sync, rename, swap of current, pruning
            log_event(
                "publish",
                "publish: current -> %s (%.3f s)",
                run_dir,
                t_pub,
                **_stage("publish", t_pub),
            )
        if refresh.pending is not None:
            with watch.stage("state"):
                refresh.save(
                    config.output.path, run_id, config.output.url
                )  # only now: the store follows `current`
        t_end = time.perf_counter()
        log_event(
            "done",
            "published %s (%.3f s in all)",
            run_dir,
            t_end - t0,
            seconds=round(t_end - t0, 6),
            run_dir=str(run_dir),
        )
    return RunOutcome(
        run_id=run_id,
        run_dir=run_dir,
        result=result,
        manifest=manifest,
        poststratified=poststratified,
        predictions=predictions,
    )
