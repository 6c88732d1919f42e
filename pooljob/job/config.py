"""The job configuration: one TOML file, parsed into one frozen, validated object.

Every problem in the file is collected and reported at once, on one line;
unknown sections and keys are rejected.  Relative paths are resolved against
the directory of the config file, so a cron job can run from anywhere.

Example:
-------
.. code-block:: toml

    [source]                 # exactly one of: path | database + table | query
    path = "data/*.parquet"  # Parquet or CSV; globs; hive partitions
    where = "year = 2024"    # optional, trusted SQL: one expression (DuckDB parses it)
    [model]
    formula = "income ~ 1 + (1 | state/county/zip)"
    family = "gaussian"
    method = "reml"          # reml | ml
    max_evaluations = 10000  # optional: the optimizer's limit (lme4's maxfun)
    on_nonconvergence = "fail"  # or "publish": published with converged = false
    # rollup = { count = "n", sum = "income_sum", sum_squares = "income_sum_squares" }
    # sampling_variance = "vi"  # an area-level (Fay–Herriot) model: one row per area
    # weights = "w"          # observation (precision) weights: residual variance σ²/w
    # solver = "iterative"   # crossed random intercepts at scale (docs/crossed-at-scale.md)
    [output]
    path = "out/income"
    interval = 0.95
    keep_runs = 5
    report = true            # optional: report.html (needs pooljob[report])
    incremental = true       # default: a path source is refreshed from <path>/state
    format = "parquet"       # or "delta": Delta tables (needs pooljob[delta])
    [engine]                 # optional
    threads = 2
    memory_limit = "4GB"
    # kind = "spark"         # or: the scan on Spark (needs pooljob[spark]); then
    # master = "yarn"        # Spark's master, and Spark settings instead of threads:
    # conf = { "spark.executor.memory" = "8g" }
    [poststratify]           # optional: MRP (gaussian, binomial and poisson models)
    path = "population.parquet"  # cells: the model's columns and a count
    weight = "population"
    by = ["state"]           # groups to report; [] for one overall figure
    draws = 1000             # posterior draws for the uncertainty
    seed = 0
    [predict]                # optional: score new cells (predictions.parquet)
    path = "cells.parquet"   # the model's columns, one prediction per row
    draws = 1000             # binomial, poisson: posterior draws (gaussian: exact)
    seed = 0
    [benchmark]              # optional: estimates adjusted to known totals (docs/outputs.md)
    path = "totals.parquet"  # one row per group of by: its total, a weighted mean
    by = ["state"]           # grouping columns; finer groupings are benchmarked within them
    total = "poverty_rate"
    weights_path = "county_population.parquet"  # weights of the finer groupings' groups
                             # (without it: `weight` is a column of the totals table)
    weight = "population"
    method = "ratio"         # or "difference"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pooljob.errors import ConfigError, FormulaError
from pooljob.job.sections import (
    ENGINES,
    EngineConfig,
    benchmark_section,
    engine_section,
    option,
    output_format,
    poststratify_section,
    predict_section,
    resolve_path,
    s3_work_dir,
)
from pooljob.model.area_options import area_option_problems
from pooljob.model.formula import Formula, parse_formula
from pooljob.model.interval_options import interval_method_problems
from pooljob.model.options import (
    DEFAULT_MAX_EVALUATIONS,
    FAMILIES,
    METHODS,
    BenchmarkConfig,
    Control,
    PoststratifyConfig,
    PredictConfig,
    Rollup,
    check_control,
    check_options,
    check_rollup,
    check_solver,
    check_weights_option,
    default_method,
)
from pooljob.outputs.report_data import resolve_grouping
from pooljob.scan.s3 import is_s3
from pooljob.scan.sql_text import query_problem, where_problem

_ALLOWED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "source": {"path": str, "database": str, "table": str, "query": str, "where": str},
    "model": {
        "formula": str,
        "family": str,
        "method": str,
        "max_evaluations": int,
        "on_nonconvergence": str,
        "rollup": dict,
        "sampling_variance": str,
        "weights": str,
        "solver": str,
    },
    "output": {
        "path": str,
        "interval": (float, int),
        "interval_method": str,
        "keep_runs": int,
        "report": bool,
        "report_grouping": str,
        "incremental": bool,
        "format": str,
    },
    "engine": {"threads": int, "memory_limit": str, "kind": str, "master": str, "conf": dict},
    "poststratify": {"path": str, "weight": str, "by": list, "draws": int, "seed": int},
    "predict": {"path": str, "draws": int, "seed": int},
    "benchmark": {
        "path": str,
        "by": list,
        "total": str,
        "weights_path": str,
        "weight": str,
        "method": str,
    },
}
_REQUIRED = {"source": (), "model": ("formula",), "output": ("path",)}


@dataclass(frozen=True)
class SourceConfig:
    """Where the rows are: exactly one of ``path``, ``database`` + ``table``, ``query``."""

    path: str | None = None
    database: str | None = None
    table: str | None = None
    query: str | None = None
    where: str | None = None
    folder: str | None = None  # the config file's: relative paths in query and where


@dataclass(frozen=True)
class ModelConfig:
    """The model: a parsed formula, its family and estimation method, the optimizer's options."""

    formula: Formula
    family: str = "gaussian"
    method: str = "reml"
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS
    on_nonconvergence: str = "fail"
    rollup: Rollup | None = None  # the source is a rollup table (docs/models.md)
    #: An area-level (Fay–Herriot) model: the column of known sampling variances.
    sampling_variance: str | None = None
    weights: str | None = None  # observation (precision) weights' column (docs/models.md)
    solver: str = "exact"  # or "iterative" (docs/crossed-at-scale.md)

    @property
    def pipeline_solver(self) -> str:
        """The solver as :func:`pooljob.pipeline.fit_source` takes it."""
        return "iterative" if self.solver == "iterative" else "auto"


@dataclass(frozen=True)
class OutputConfig:
    """Where and how results are published."""

    path: Path
    interval: float = 0.95
    interval_method: str = "plugin"  # or "prasad-rao": lower/upper from rmse
    keep_runs: int = 5
    report: bool = False  # publish report.html with the run
    report_grouping: str | None = None  # the grouping the report draws; default the finest
    incremental: bool = True  # path sources: refresh from the statistics store in <path>/state
    format: str = "parquet"  # or "delta": Delta tables (pooljob.outputs.delta)
    url: str | None = None  # an s3:// output (path is then its local work folder, for the lock)


@dataclass(frozen=True)
class Config:
    """A validated job configuration.

    Attributes
    ----------
    file : Path
        The TOML file it came from.
    raw : dict
        The file's content as parsed (recorded in the manifest).
    """

    file: Path
    source: SourceConfig
    model: ModelConfig
    output: OutputConfig
    engine: EngineConfig
    raw: dict[str, Any]
    poststratify: PoststratifyConfig | None = None
    predict: PredictConfig | None = None
    benchmark: BenchmarkConfig | None = None

    @property
    def control(self) -> Control:
        """The fit's options: the optimizer's (``[model]``) and the interval method."""
        m = self.model
        return Control(m.max_evaluations, m.on_nonconvergence, self.output.interval_method)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        dict: "a table",
        list: "a list of column names",
    }
    if isinstance(t, tuple):
        return names[t[0]]
    return names[t]


def _check_types(raw: dict[str, Any], problems: list[str]) -> None:
    for section, body in raw.items():
        if section not in _ALLOWED:
            problems.append(
                f"unknown section [{section}]; allowed: " + ", ".join(f"[{s}]" for s in _ALLOWED)
            )
            continue
        if not isinstance(body, dict):
            problems.append(f"[{section}] must be a table, got {body!r}")
            continue
        for key, value in body.items():
            if key not in _ALLOWED[section]:
                problems.append(
                    f"unknown key [{section}] {key}; allowed: {', '.join(_ALLOWED[section])}"
                )
                continue
            expected = _ALLOWED[section][key]
            if (isinstance(value, bool) and expected is not bool) or not isinstance(
                value, expected
            ):
                problems.append(f"[{section}] {key} = {value!r} must be {_type_name(expected)}")
    for section, keys in _REQUIRED.items():
        if section not in raw:
            problems.append(f"missing section [{section}]")
            continue
        problems.extend(
            f"missing [{section}] {key}" for key in keys if key not in raw.get(section, {})
        )


def _source(raw: dict[str, Any], base: Path, problems: list[str]) -> SourceConfig:
    src = {k: v for k, v in raw.get("source", {}).items() if isinstance(v, str)}
    given = [k for k in ("path", "database", "query") if k in src]
    if len(given) != 1:
        problems.append(
            "[source] needs exactly one of path, database (with table) or query; got "
            + (", ".join(given) if given else "none")
        )
    if "database" in src and "table" not in src:
        problems.append('[source] database needs a table = "..." to read')
    if "table" in src and "database" not in src:
        problems.append('[source] table needs the database = "..." that holds it')
    for key in ("path", "database", "table", "query", "where"):
        if key in src and not src[key].strip():
            problems.append(f"[source] {key} is empty")
    return SourceConfig(
        path=resolve_path(base, src["path"]) if "path" in src else None,
        database=resolve_path(base, src["database"]) if "database" in src else None,
        table=src.get("table"),
        query=src.get("query"),
        where=src.get("where"),
        folder=str(base),
    )


def _sql_problems(source: SourceConfig) -> list[str | None]:
    """DuckDB's parser on ``where`` (one expression) and ``query`` (one SELECT); nothing runs."""
    return [
        where_problem(source.where) if source.where and source.where.strip() else None,
        query_problem(source.query) if source.query and source.query.strip() else None,
    ]


def parse_config(raw: dict[str, Any], file: Path) -> Config:
    """Validate a parsed TOML document; raise one ConfigError listing every problem."""
    problems: list[str] = []
    _check_types(raw, problems)
    base = file.resolve().parent
    source = _source(raw, base, problems)
    model_raw = raw.get("model", {}) if isinstance(raw.get("model"), dict) else {}
    out_raw = raw.get("output", {}) if isinstance(raw.get("output"), dict) else {}
    eng_raw = raw.get("engine", {}) if isinstance(raw.get("engine"), dict) else {}
    formula: Formula | None = None
    if isinstance(model_raw.get("formula"), str):
        try:
            formula = parse_formula(model_raw["formula"])
        except FormulaError as exc:
            problems.append(f"[model] formula: {exc}")
    family = option(model_raw.get("family", "gaussian"), FAMILIES)
    method = option(
        model_raw.get("method", default_method(family) if isinstance(family, str) else "reml"),
        METHODS,
    )
    interval = out_raw.get("interval", 0.95)
    if isinstance(family, str) and isinstance(method, str):
        problems.extend(
            p
            for p in check_options(
                family, method, interval if isinstance(interval, int | float) else 0.95
            )
        )
    # values of the wrong type are reported by _check_types
    max_evaluations = model_raw.get("max_evaluations", DEFAULT_MAX_EVALUATIONS)
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int):
        max_evaluations = DEFAULT_MAX_EVALUATIONS
    on_nonconvergence = model_raw.get("on_nonconvergence", "fail")
    if not isinstance(on_nonconvergence, str):
        on_nonconvergence = "fail"
    problems.extend(f"[model] {p}" for p in check_control(max_evaluations, on_nonconvergence))
    solver = model_raw.get("solver", "exact")
    solver_extra = model_raw.get("weights"), out_raw.get("interval_method", "plugin")
    problems.extend(
        f"[model] {p}" for p in check_solver(solver, family, method, formula, *solver_extra)
    )
    rollup, rollup_problems = check_rollup(model_raw.get("rollup"), family)
    problems.extend(f"[model] {p}" for p in rollup_problems)
    keep_runs = out_raw.get("keep_runs", 5)
    if isinstance(keep_runs, int) and not isinstance(keep_runs, bool) and keep_runs < 1:
        problems.append(f"[output] keep_runs = {keep_runs} must be at least 1")
    engine = engine_section(eng_raw, source.database, source.query, problems)
    if engine.kind == "duckdb":  # trusted SQL, still one expression or one SELECT
        problems.extend(p for p in _sql_problems(source) if p is not None)
    if engine.kind == "spark" and "rollup" in model_raw:
        problems.append(
            "[model] rollup runs on [engine] kind = 'duckdb': the Spark engine computes the "
            "statistics of rows only"
        )
    out_path = out_raw.get("path")
    if isinstance(out_path, str) and not out_path.strip():
        problems.append("[output] path is empty")
    url = out_path.rstrip("/") if isinstance(out_path, str) and is_s3(out_path) else None
    if url is not None and not url[len("s3://") :]:
        problems.append(f"[output] path = {out_path!r} names no bucket; give s3://bucket/prefix")
    report_grouping = out_raw.get("report_grouping")
    if formula is not None and isinstance(report_grouping, str):
        try:
            names = tuple(g.name for g in formula.groupings)
            report_grouping = resolve_grouping(names, report_grouping)
        except ConfigError as exc:
            problems.append(f"[output] {exc}")
    fmt = output_format(out_raw, problems)
    post = poststratify_section(raw, base, problems)
    predict = predict_section(raw, base, problems)
    groupings = formula.groupings if formula is not None else None
    benchmark = benchmark_section(raw, base, groupings, problems)
    variance = model_raw.get("sampling_variance")
    if solver == "iterative":
        extra = [n for n, v in (("[poststratify]", post), ("[predict]", predict)) if v is not None]
        if isinstance(variance, str):
            extra.append("[model] sampling_variance")
        problems.extend(f'{e} does not go with solver = "iterative"' for e in extra)
    if isinstance(variance, str) and "rollup" in model_raw:
        problems.append(
            "[model] rollup and sampling_variance do not go together: a rollup holds rows of "
            "one area each, an area-level model one row per area; keep one of them"
        )
    if isinstance(variance, str):
        problems.extend(f"[model] {p}" for p in area_option_problems(formula, family, variance))
        if post is not None:
            problems.append(
                "[poststratify] does not apply to an area-level model (sampling_variance): it "
                "has no unit-level predictions to weight"
            )
        if predict is not None:
            problems.append(
                "[predict] does not apply to an area-level model (sampling_variance): it has "
                "no unit-level predictions"
            )
        if engine.kind == "spark":
            problems.append(
                '[model] sampling_variance (an area-level model) runs on [engine] kind = "duckdb"'
            )
    interval_method = out_raw.get("interval_method", "plugin")
    if isinstance(interval_method, str):  # other types are reported by _check_types
        area = isinstance(variance, str)
        weighted = model_raw.get("weights")
        checks = interval_method_problems(interval_method, formula, family, method, area, weighted)
        problems.extend(f"[output] {p}" for p in checks)
    weights = model_raw.get("weights")
    problems.extend(
        f"[model] {p}"
        for p in check_weights_option(  # a value of the wrong type is _check_types'
            weights if isinstance(weights, str) else None,
            model_raw.get("rollup"),
            variance,
        )
    )
    if problems:
        raise ConfigError(f"config {str(file)!r}: " + "; ".join(problems))
    assert formula is not None and isinstance(out_path, str)
    return Config(
        file=file,
        source=source,
        model=ModelConfig(
            formula=formula,
            family=family,
            method=method,
            max_evaluations=max_evaluations,
            on_nonconvergence=on_nonconvergence,
            rollup=rollup,
            sampling_variance=variance if isinstance(variance, str) else None,
            weights=weights if isinstance(weights, str) else None,
            solver=str(solver),
        ),
        output=OutputConfig(
            path=s3_work_dir(url) if url else Path(resolve_path(base, out_path)),
            url=url,
            interval=float(interval),
            interval_method=str(interval_method),
            keep_runs=int(keep_runs),
            report=out_raw.get("report") is True,
            report_grouping=report_grouping if isinstance(report_grouping, str) else None,
            incremental=out_raw.get("incremental") is not False,
            format=fmt,
        ),
        engine=engine,
        raw=raw,
        poststratify=post,
        predict=predict,
        benchmark=benchmark,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(file)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(file)!r} cannot be read: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(file)!r} is not valid TOML: {exc}") from None
    return parse_config(raw, file)


__all__ = ["ENGINES", "FAMILIES", "METHODS", "Config", "load_config", "parse_config"]
