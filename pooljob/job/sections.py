"""Sections of the job config parsed on their own: poststratify, predict, benchmark, engine.

Paths are resolved against the config file's directory; problems are
collected into the caller's list (reported at once, on one line).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pooljob.model.options import (
    BenchmarkConfig,
    PoststratifyConfig,
    PredictConfig,
    check_benchmark,
)
from pooljob.model.terms import Grouping
from pooljob.outputs.s3_publish import work_dir

#: ``[engine] kind``: where the scan runs.
ENGINES = ("duckdb", "spark")

#: ``[output] format``: Parquet run folders (pooljob.outputs.publish) or Delta tables.
FORMATS = ("parquet", "delta")

#: Where an S3 output keeps its local lock and staging folder (one folder per output URL).
S3_WORK_ROOT = Path(tempfile.gettempdir()) / "pooljob-s3"


def s3_work_dir(url: str) -> Path:
    """The local work folder of the S3 output ``url``: its lock and staging area."""
    return work_dir(url, S3_WORK_ROOT)


def resolve_path(base: Path, value: str) -> str:
    """``value`` relative to ``base`` (a URL as given)."""
    if "://" in value:
        return value
    return os.path.normpath(base / value)


def poststratify_section(
    raw: dict[str, Any], base: Path, problems: list[str]
) -> PoststratifyConfig | None:
    """``[poststratify]``: the population table, its weight, ``by``, draws and seed."""
    body = raw.get("poststratify")
    if not isinstance(body, dict):
        return None
    for key in ("path", "weight"):
        if key not in body:
            problems.append(f"missing [poststratify] {key}")
    by = body.get("by", [])
    if isinstance(by, list) and not all(isinstance(c, str) and c for c in by):
        problems.append(f"[poststratify] by = {by!r} must be a list of column names")
    elif isinstance(by, list) and len(set(by)) != len(by):
        problems.append(f"[poststratify] by = {by!r} names a column twice")
    draws, seed = _draws(body, "poststratify", problems)
    path, weight = body.get("path"), body.get("weight")
    if not (isinstance(path, str) and isinstance(weight, str) and isinstance(by, list)):
        return None
    if not path.strip():
        problems.append("[poststratify] path is empty")
    return PoststratifyConfig(
        path=resolve_path(base, path),
        weight=weight,
        by=tuple(str(c) for c in by),
        draws=draws,
        seed=seed,
    )


def _draws(body: dict[str, Any], section: str, problems: list[str]) -> tuple[int, int]:
    """``draws`` and ``seed`` of a section (the defaults where wrong; problems noted)."""
    draws = body.get("draws", 1000)
    if isinstance(draws, int) and not isinstance(draws, bool) and not 100 <= draws <= 100_000:
        problems.append(f"[{section}] draws = {draws} must be between 100 and 100000")
    seed = body.get("seed", 0)
    if isinstance(seed, int) and not isinstance(seed, bool) and seed < 0:
        problems.append(f"[{section}] seed = {seed} must be >= 0")
    return (
        int(draws) if isinstance(draws, int) else 1000,
        int(seed) if isinstance(seed, int) else 0,
    )


def predict_section(raw: dict[str, Any], base: Path, problems: list[str]) -> PredictConfig | None:
    """``[predict]``: the table of cells to score, draws and seed."""
    body = raw.get("predict")
    if not isinstance(body, dict):
        return None
    draws, seed = _draws(body, "predict", problems)
    path = body.get("path")
    if "path" not in body:
        problems.append("missing [predict] path")
    if not isinstance(path, str):
        return None
    if not path.strip():
        problems.append("[predict] path is empty")
    return PredictConfig(path=resolve_path(base, path), draws=draws, seed=seed)


def benchmark_section(
    raw: dict[str, Any], base: Path, groupings: tuple[Grouping, ...] | None, problems: list[str]
) -> BenchmarkConfig | None:
    """``[benchmark]``: the totals table, ``by``, ``total``, the weights and the method.

    ``groupings`` are the formula's (None if it did not parse): ``by`` must be
    columns of at least one of them.
    """
    body = raw.get("benchmark")
    if not isinstance(body, dict):
        return None
    if any(not isinstance(v, list if k == "by" else str) for k, v in body.items()):
        return None  # a value of the wrong type: reported by the config's type check
    given = {k: v for k, v in body.items() if k not in ("path", "weights_path")}
    for key in ("path", "weights_path"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            given[key] = resolve_path(base, value)
        elif key in body:
            given[key] = value
    section, found = check_benchmark(given, groupings)
    problems.extend(f"[{p.replace('benchmark ', 'benchmark] ', 1)}" for p in found)
    return section


def output_format(out: dict[str, Any], problems: list[str]) -> str:
    """``[output] format``: ``"parquet"`` (default) or ``"delta"`` (not with ``report``)."""
    fmt = out.get("format", "parquet")
    if not isinstance(fmt, str):
        return "parquet"  # the wrong type is reported with the others
    if fmt not in FORMATS:
        problems.append(f"[output] format = {fmt!r} must be one of: " + ", ".join(FORMATS))
        return "parquet"
    if fmt == "delta" and out.get("report") is True:
        problems.append(
            '[output] report = true needs format = "parquet": a Delta output publishes tables '
            "only; write the report with: pooljob report OUTPUT_PATH"
        )
    return fmt


def option(value: Any, choices: tuple[str, ...]) -> Any:
    """An option chosen from ``choices`` (family, method, engine kind), in any case.

    A value that is none of them is kept as given, for the error message.
    """
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    return value


@dataclass(frozen=True)
class EngineConfig:
    """The engine of the scan, and its settings.

    ``kind = "duckdb"`` (default) takes ``threads`` (default: all cores) and
    ``memory_limit`` (default: a quarter of RAM, at most 3 GiB);
    ``kind = "spark"`` takes ``master`` (default: what ``spark-submit`` or an
    active session says) and ``conf``, Spark settings as strings (nested TOML
    tables are joined with dots).
    """

    threads: int | None = None
    memory_limit: str | None = None
    kind: str = "duckdb"
    master: str | None = None
    conf: dict[str, str] = field(default_factory=dict)


def _flat_conf(table: dict[str, Any], prefix: str, problems: list[str]) -> dict[str, str]:
    """Spark settings as strings; ``[engine.conf] spark.x.y = 1`` nests in TOML, joined here."""
    out: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_conf(value, f"{name}.", problems))
        elif isinstance(value, bool):
            out[name] = str(value).lower()
        elif isinstance(value, str | int | float):
            out[name] = str(value)
        else:
            problems.append(f"[engine] conf {name} = {value!r} must be a string, number or boolean")
    return out


def engine_section(
    eng_raw: dict[str, Any], database: str | None, query: str | None, problems: list[str]
) -> EngineConfig:
    """The [engine] section; Spark reads only a [source] path and takes Spark settings.

    ``database`` and ``query`` are the ``[source]``'s (Spark cannot read them).
    """
    kind = option(eng_raw.get("kind", "duckdb"), ENGINES)
    threads = eng_raw.get("threads")
    if isinstance(threads, int) and threads < 1:
        problems.append(f"[engine] threads = {threads} must be at least 1")
    conf = eng_raw.get("conf")
    flat = _flat_conf(conf, "", problems) if isinstance(conf, dict) else {}
    if not isinstance(kind, str) or kind not in ENGINES:
        if isinstance(kind, str):
            problems.append(
                f"[engine] kind = {kind!r} is not supported; use one of {', '.join(ENGINES)}"
            )
        kind = "duckdb"
    elif kind == "spark":
        if database is not None or query is not None:
            given = "database" if database is not None else "query"
            problems.append(
                f'[source] {given} cannot be read by [engine] kind = "spark"; give a [source] '
                'path (Parquet or CSV files), or use kind = "duckdb"'
            )
        duck = [k for k in ("threads", "memory_limit") if k in eng_raw]
        if duck:
            problems.append(
                f'[engine] {" and ".join(duck)} set DuckDB; with kind = "spark" give Spark '
                'settings in [engine] conf instead (e.g. "spark.executor.memory" = "8g")'
            )
    else:
        spark_only = [k for k in ("master", "conf") if k in eng_raw]
        if spark_only:
            problems.append(
                f"[engine] {' and '.join(spark_only)}: Spark settings; add "
                'kind = "spark" to run the scan on Spark'
            )
    master = eng_raw.get("master")
    return EngineConfig(
        threads=threads if isinstance(threads, int) else None,
        memory_limit=eng_raw.get("memory_limit"),
        kind=kind,
        master=master if isinstance(master, str) else None,
        conf=flat,
    )
