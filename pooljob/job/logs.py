"""Logging to stderr: readable text on a terminal, JSON lines for schedulers.

Every record may carry an ``event`` name and structured ``fields``
(:func:`log_event`); fields bound with :func:`log_context` (the run id) are
added to every record inside it.  In text mode a record is one line,
``pooljob INFO: message``; in JSON mode it is one object per line::

    {"time": "2026-11-22T00:36:12.990Z", "level": "info", "event": "scan",
     "message": "scan: 600 rows read, ...", "run_id": "...", "stage": "scan",
     "seconds": 0.012, "rows_read": 600, "rows_used": 600, "dropped": {...}}
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
_CORE = ("time", "level", "event", "message")

log = logging.getLogger("pooljob")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "pooljob_log_context", default=None
)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the block (e.g. ``run_id``)."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def log_event(
    name: str, message: str, *args: Any, level: int = logging.INFO, **fields: Any
) -> None:
    """Log ``message % args`` as event ``name`` with structured ``fields``."""
    log.log(level, message, *args, extra={"event": name, "fields": fields})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line(ts: float, level: str, event: str, message: str, fields: dict[str, Any]) -> str:
    obj: dict[str, Any] = {"time": _iso(ts), "level": level, "event": event, "message": message}
    obj.update({k: v for k, v in fields.items() if k not in _CORE})
    return json.dumps(obj, default=str)


def json_line(level: str, event: str, message: str, **fields: Any) -> str:
    """One JSON object on one line: time (now), level, event, message, then ``fields``."""
    return _line(time.time(), level, event, message, fields)


class _ContextFilter(logging.Filter):
    """Attach the bound context to each record as it is emitted (same thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = dict(_context.get() or {})
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        fields: dict[str, Any] = {
            **getattr(record, "context", {}),
            **(getattr(record, "fields", None) or {}),
        }
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        default = "python_warning" if record.name == "py.warnings" else "message"
        event = getattr(record, "event", default)
        level = record.levelname.lower()
        return _line(record.created, level, event, record.getMessage(), fields)


def setup_logging(
    verbose: bool = False, quiet: bool = False, fmt: str = "text", stream: TextIO | None = None
) -> None:
    """Send pooljob's logs to ``stream`` (stderr) in format ``fmt``.

    Parameters
    ----------
    verbose : bool
        Debug records too.
    quiet : bool
        Only warnings and errors.
    fmt : {"text", "json"}
    stream : file, optional
        Defaults to ``sys.stderr`` at the time of the call.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("pooljob %(levelname)s: %(message)s"))
    handler.addFilter(_ContextFilter())
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    # Python warnings (numpy, polars) would print plain text: in JSON mode they are records too
    logging.captureWarnings(fmt == "json")
    if fmt == "json":
        warnings_log = logging.getLogger("py.warnings")
        warnings_log.handlers[:] = [handler]
        warnings_log.propagate = False
