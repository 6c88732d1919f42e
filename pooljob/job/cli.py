"""Command line: ``pooljob run CONFIG``, ``pooljob validate CONFIG``, ``pooljob demo-data DIR``.

``pooljob report RUN_DIR [--output FILE]`` writes the report of a published
run (default ``report.html`` in the working directory; never into the run);
for an output path of Delta tables (local or ``s3://``), of its latest complete run.
``pooljob explain CONFIG`` prints the SQL a run would send to DuckDB.
Exit codes: 0 success; 2 bad config or formula; 3 bad input data; 4 output
locked by another run; 5 outputs could not be written; 6 the fit did not
converge; 70 internal error.
Errors are one line on stderr, with no traceback unless ``--verbose``; logs
go to stderr as text or, with ``--log-format json``, as JSON lines (errors
too).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from pooljob import __version__
from pooljob.errors import ConfigError, PooljobError
from pooljob.job.logs import LOG_FORMATS, json_line, setup_logging
from pooljob.job.progress import Progress, progress_mode
from pooljob.job.summary import (
    benchmark_text,
    format_summary,
    poststratified_text,
    predictions_text,
)

log = logging.getLogger("pooljob")

#: ``pooljob report``'s default ``--output``, in the working directory.
REPORT_FILE = "report.html"

EXIT_CODES = """\
exit codes:
  0    success (run: the new outputs are published; validate, explain: the config is valid)
  2    bad config, formula or command line
  3    bad input data (missing file or column, no usable rows, a file changed while read)
  4    the output is locked by another run, named in the message
  5    the outputs could not be written (no space, no permission, read-only file system)
  6    the fit did not converge (failed the convergence check; see [model] max_evaluations
       and on_nonconvergence); nothing was published
  70   internal error (run again with --verbose and report the traceback)
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM): nothing new was published
"""


def _setup_logging(verbose: bool, quiet: bool, fmt: str = "text") -> None:
    setup_logging(verbose, quiet, fmt)


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that the lock and partial run are cleaned up."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors can be one JSON line."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        """Report a usage error (exit code 2)."""
        if self.json_errors:
            line = json_line("error", "usage_error", f"{self.prog}: {message}", exit_code=2)
            self.exit(2, line + "\n")
        super().error(message)


def _wants_json(argv: Sequence[str]) -> bool:
    args = list(argv)
    pairs = itertools.pairwise(args)
    return "--log-format=json" in args or any(a == "--log-format" and b == "json" for a, b in pairs)


def _progress(args: argparse.Namespace) -> Progress:
    """A status line when stderr is a terminal (text logs), stage events in JSON, else nothing."""
    return Progress(progress_mode(args.log_format, args.quiet))


def _cmd_run(args: argparse.Namespace) -> int:
    from pooljob.job.config import load_config
    from pooljob.job.run import run

    config = load_config(args.config)
    outcome = run(config, progress=_progress(args), full=args.full)
    if not args.quiet:
        print(format_summary(outcome.result))
        if outcome.result.benchmarked is not None:
            print(benchmark_text(outcome.result.benchmarked))
        if outcome.poststratified is not None:
            print(poststratified_text(outcome.poststratified))
        if outcome.predictions is not None:
            print(predictions_text(outcome.predictions))
        out = config.output
        if out.format == "delta":
            print(f"published: {out.url or out.path} (Delta tables, run {outcome.run_id})")
        else:
            where = f"{out.url}/current.json" if out.url else str(out.path / "current")
            print(f"published: {where} -> runs/{outcome.run_id}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from pooljob.errors import ConfigError
    from pooljob.job.config import load_config

    config = load_config(args.config)
    if config.predict is None:
        raise ConfigError(
            f"config {str(config.file)!r} has no [predict] section: add one with "
            'path = "cells.parquet" (the cells to score)'
        )
    return _cmd_run(args)


def _cmd_validate(args: argparse.Namespace) -> int:
    from pooljob.job.config import load_config
    from pooljob.job.engine import open_source
    from pooljob.scan.schema import check_schema

    config = load_config(args.config)
    if config.output.format == "delta":
        from pooljob.outputs.delta import require_deltalake

        require_deltalake()
    variance = config.model.sampling_variance
    with open_source(config) as source:  # on the config's engine: Spark reads its own schema
        if config.model.rollup is not None:
            from pooljob.scan.rollup import check_rollup_schema

            check_rollup_schema(
                source, config.model.formula, config.model.family, config.model.rollup
            )
        elif variance is not None:
            from pooljob.scan.area_rows import check_area_schema

            check_area_schema(source, config.model.formula, variance)
        else:
            check_schema(source, config.model.formula, config.model.family)
        if config.model.weights is not None:
            from pooljob.scan.weights import check_weight_schema

            check_weight_schema(source, config.model.weights)
    m = config.model
    found = [c for c in m.formula.columns if m.rollup is None or c != m.formula.response]
    if m.rollup is not None:
        found += [c for c in m.rollup.columns if c not in found]
    if variance is not None and variance not in found:
        found.append(variance)
    tail = ""
    if config.benchmark is not None:  # the tables read and checked, as a run does first
        from pooljob.outputs.benchmark import read_benchmark

        tables = read_benchmark(config.benchmark, m.formula.groupings)
        tail = f"; benchmark totals: {tables.totals.height} groups"
        if tables.weights is not None:
            tail += f", weights: {tables.weights.height} groups"
    if m.weights is not None and m.weights not in found:
        found.append(m.weights)
    if not args.quiet:
        print(f"config {args.config!r} is valid; columns found: " + ", ".join(found) + tail)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from pooljob.job.config import load_config
    from pooljob.job.explain import explain

    print(explain(load_config(args.config)), end="")
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from pooljob.job.demo import write_demo_data, write_poll_data

    if args.poll:
        path = write_poll_data(args.directory, seed=args.seed)
    else:
        path = write_demo_data(args.directory, rows=args.rows, seed=args.seed)
    if not args.quiet:
        print(f"demo data written to {path}")
    return 0


def _delta_report(where: Path | str, grouping: str | None, output: Path) -> Path:
    """The report of the latest complete run of a Delta output (local or on S3)."""
    import tempfile

    from pooljob.outputs.delta import export_run, require_deltalake
    from pooljob.outputs.report import write_report

    require_deltalake()
    with tempfile.TemporaryDirectory() as tmp:
        export_run(where, Path(tmp))
        return write_report(tmp, grouping, output)


def _cmd_report(args: argparse.Namespace) -> int:
    from pooljob.outputs.report import REPORT, write_report

    output = Path(args.output)
    if output.is_dir():
        output = output / REPORT
    if "://" in args.run_dir:
        from pooljob.outputs.delta import is_delta_output, location

        url = location(args.run_dir)
        if not isinstance(url, str) or not is_delta_output(url):
            raise ConfigError(
                f"pooljob report reads a run folder on this machine or a Delta output on S3, not "
                f"{args.run_dir!r}; copy the run there first (e.g. aws s3 cp --recursive), or "
                "set [output] report = true"
            )
        path = _delta_report(url, args.grouping, output)
    else:
        run_dir = Path(args.run_dir).resolve()
        if run_dir in output.resolve().parents:
            raise ConfigError(
                f"--output {args.output!r} is inside the run {str(run_dir)!r}, and a published "
                "run never changes; write the report elsewhere, e.g. --output report.html"
            )
        if (run_dir / "runs" / "_delta_log").is_dir():  # a Delta output: its latest run
            path = _delta_report(run_dir, args.grouping, output)
        else:
            path = write_report(args.run_dir, args.grouping, output)
    if not args.quiet:
        print(f"report written to {path}")
    return 0


_CONFIG = "the job's TOML file (relative paths in it are relative to the file)"


def _common_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    """--verbose, --quiet, --log-format: before the command or after it (``default`` SUPPRESS)."""
    flag: dict[str, object] = {} if default is None else {"default": default}
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="debug logs, and a traceback with an error (default: info logs, one-line errors)",
        **flag,  # type: ignore[arg-type]
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="only warnings and errors, no progress, and nothing on stdout but explain's SQL "
        "(default: info logs, progress on a terminal, the summary on stdout)",
        **flag,  # type: ignore[arg-type]
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text" if default is None else default,
        help="logs on stderr as text, with a status line per stage on a terminal, or as "
        "JSON lines for schedulers, with stage_start/stage_end events (default: text)",
    )


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    """The argument parser of the ``pooljob`` command (usage errors as JSON if ``json_errors``)."""
    parser = _Parser(
        prog="pooljob",
        description="Partially pooled group means (multilevel models) from DuckDB statistics.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pooljob {__version__}")
    _common_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser(
        "run",
        help="fit the model of CONFIG and publish its outputs",
        description="Scan the source of CONFIG, fit its model and publish the outputs; "
        "print a summary on stdout. While it runs, stderr shows a status line per stage "
        "when it is a terminal (text logs), or stage_start/stage_end events with "
        "--log-format json.",
    )
    p_run.add_argument("config", help=_CONFIG)
    p_run.add_argument(
        "--full",
        action="store_true",
        help="scan every source file and rebuild the statistics store (default: refresh "
        "a [source] path incrementally, scanning only new and changed files)",
    )
    p_run.set_defaults(func=_cmd_run)
    p_pred = sub.add_parser(
        "predict",
        help="fit the model of CONFIG and publish predictions for its [predict] cells",
        description="As run, for a CONFIG with a [predict] section (refused without one): "
        "publishes the run with predictions.parquet and prints its first rows.",
    )
    p_pred.add_argument("config", help=_CONFIG)
    p_pred.add_argument(
        "--full", action="store_true", help="as for run: scan every file, rebuild the store"
    )
    p_pred.set_defaults(func=_cmd_predict)
    p_val = sub.add_parser("validate", help="check CONFIG and the source schema, without fitting")
    p_val.add_argument("config", help=_CONFIG)
    p_val.set_defaults(func=_cmd_validate)
    p_exp = sub.add_parser(
        "explain", help="print the SQL a run of CONFIG would send to DuckDB, without scanning"
    )
    p_exp.add_argument("config", help=_CONFIG)
    p_exp.set_defaults(func=_cmd_explain)
    p_demo = sub.add_parser("demo-data", help="write the deterministic demo data set")
    p_demo.add_argument("directory", metavar="DIR", help="where to write it (created if need be)")
    p_demo.add_argument(
        "--rows",
        type=int,
        default=20_000,
        help="rows of the income demo (default: %(default)s; not used with --poll)",
    )
    p_demo.add_argument(
        "--seed",
        type=int,
        default=2012,
        help="the random seed: equal seeds write equal data (default: %(default)s)",
    )
    p_demo.add_argument(
        "--poll",
        action="store_true",
        help="write the poll demo instead (poll.parquet and population.parquet, for MRP)",
    )
    p_demo.set_defaults(func=_cmd_demo_data)
    p_rep = sub.add_parser(
        "report", help="write the report.html of a published run (the run is not changed)"
    )
    p_rep.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a run directory, e.g. out/income/current, or the [output] path of Delta tables "
        "(local or s3://bucket/prefix)",
    )
    p_rep.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        default=REPORT_FILE,
        help=f"where to write it, outside the run (default: {REPORT_FILE} in the working "
        "directory; a directory: FILE/report.html)",
    )
    p_rep.add_argument("--grouping", help="the grouping to draw (default: the finest)")
    p_rep.set_defaults(func=_cmd_report)
    for p in (p_run, p_pred, p_val, p_demo, p_rep, p_exp):
        _common_options(p, argparse.SUPPRESS)
    for p in (parser, *sub.choices.values()):
        if isinstance(p, _Parser):
            p.json_errors = json_errors
    return parser


_LEFT = "the published output was left as it was"


def _fail(args: argparse.Namespace, event: str, text: str, code: int, exc: BaseException) -> int:
    """Report a failure as one line on stderr (one JSON object in JSON mode)."""
    if args.log_format == "json":
        fields: dict[str, object] = {"exit_code": code, "error": type(exc).__name__}
        if args.verbose:
            fields["traceback"] = "".join(traceback.format_exception(exc))
        print(json_line("error", event, text, **fields), file=sys.stderr)
    else:
        if args.verbose:
            log.error("%s", event, exc_info=exc)
        prefix = {"error": "error: ", "internal_error": "internal error: "}.get(event, "")
        print(f"pooljob: {prefix}{text}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(json_errors=_wants_json(argv))
    if not argv:  # bare `pooljob`: the help, and exit 2 as for any other usage error
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet, args.log_format)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        code: int = args.func(args)
        return code
    except PooljobError as exc:
        return _fail(args, "error", str(exc), exc.exit_code, exc)
    except KeyboardInterrupt as exc:
        return _fail(args, "interrupted", "interrupted; " + _LEFT, 130, exc)
    except Terminated as exc:
        return _fail(args, "terminated", "terminated by SIGTERM; " + _LEFT, 143, exc)
    except Exception as exc:  # an internal error: still one line unless --verbose
        text = f"{type(exc).__name__}: {exc}".splitlines()[0]
        hint = " (run again with --verbose for the traceback)" if not args.verbose else ""
        return _fail(args, "internal_error", text + hint, 70, exc)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    sys.exit(main())
