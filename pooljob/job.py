"""A job run: config → one scan → fit → Parquet outputs and manifest, published atomically."""

from __future__ import annotations

import functools
import json
import logging
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pooljob.api import fit_source
from pooljob.config import Config
from pooljob.publish import new_run_id, output_lock, publish
from pooljob.results import FitResult
from pooljob.source import open_config_source

log = logging.getLogger("pooljob")

OUTPUT_TABLES = ("estimates", "effects", "coefficients", "components")
_PACKAGES = ("pooljob", "duckdb", "polars", "numpy", "pyarrow")


@dataclass(frozen=True)
class RunOutcome:
    """What a successful run produced."""

    run_id: str
    run_dir: Path
    result: FitResult
    manifest: dict[str, Any]


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
    config: Config, result: FitResult, run_id: str, started: float, timings: dict[str, float]
) -> dict[str, Any]:
    """The manifest: the fit's numbers, row accounting, config, versions, timings."""
    return {
        "run_id": run_id,
        **result.summary(),
        "components": result.components.to_dicts(),
        "coefficients": result.coefficients.to_dicts(),
        "outputs": [f"{name}.parquet" for name in OUTPUT_TABLES],
        "config": config.raw,
        "config_file": str(config.file),
        "versions": dict(versions()),
        "timings_seconds": timings,
        "started_at": _iso(started),
        "finished_at": _iso(time.time()),
    }


def run(config: Config) -> RunOutcome:
    """Run the job described by ``config`` and publish its outputs."""
    started = time.time()
    t0 = time.perf_counter()
    run_id = new_run_id()
    src = config.source
    with output_lock(config.output.path):
        log.info("run %s: reading %s", run_id, src.path or src.table or "query")
        with open_config_source(
            path=src.path,
            database=src.database,
            table=src.table,
            query=src.query,
            where=src.where,
            threads=config.engine.threads,
            memory_limit=config.engine.memory_limit,
        ) as source:
            t_open = time.perf_counter()
            result = fit_source(
                config.model.formula,
                source,
                config.model.family,
                config.model.method,
                config.output.interval,
            )
        rows = result.rows
        dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in rows["dropped"].items() if v)
        log.info(
            "scan: %d rows read, %d used%s (%.3f s)",
            rows["read"],
            rows["used"],
            f"; dropped {dropped}" if dropped else "",
            result.timings["scan"],
        )
        log.info(
            "fit: %s %s, objective %.6f, %s%s (%d evaluations, %.3f s)",
            config.model.method.upper(),
            config.model.formula.text,
            result.objective,
            "converged" if result.converged else "NOT converged",
            ", singular" if result.singular else "",
            result.optimizer["evaluations"],
            result.timings["fit"],
        )
        timings = {"open": t_open - t0, **result.timings}

        def write(directory: Path) -> None:
            t_w = time.perf_counter()
            for name in OUTPUT_TABLES:
                getattr(result, name).write_parquet(directory / f"{name}.parquet")
            timings["write"] = time.perf_counter() - t_w
            timings["total"] = time.perf_counter() - t0
            manifest.update(build_manifest(config, result, run_id, started, timings))
            (directory / "manifest.json").write_text(
                json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8"
            )

        manifest: dict[str, Any] = {}
        run_dir = publish(config.output.path, run_id, write, config.output.keep_runs)
        log.info("published %s (%.3f s in all)", run_dir, time.perf_counter() - t0)
    return RunOutcome(run_id=run_id, run_dir=run_dir, result=result, manifest=manifest)
