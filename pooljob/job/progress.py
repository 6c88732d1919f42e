r"""What a run shows while it goes on: a status line on a terminal, stage events in JSON.

:class:`Progress` is the run's :class:`~pooljob.pipeline.Watch`.  Its mode is

``"terminal"`` (stderr is a terminal, text logs, not ``--quiet``)
    one status line per stage on stderr, ``scan: 42% of 3 files (1.2 s)``,
    ``fit: 57 evaluations, best criterion 4321.09 (0.8 s)``, redrawn in place
    (``\r``) at most ``1 / interval`` times a second and cleared when the
    stage ends, so that what stays on the screen is the log lines as without
    it.  A log record written during a stage clears the line first.
``"events"`` (``--log-format json``)
    a ``stage_start`` and a ``stage_end`` record per stage (``stage``, and
    ``seconds`` and ``status`` at the end); no status line.
``"off"``
    nothing (a pipe, a file, cron, ``--quiet``).

The scan's share done comes from DuckDB (``query_progress()`` of the
connection scanning, polled by a thread; :meth:`Progress.probing`).
"""

from __future__ import annotations

import contextvars
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from pooljob.job.logs import log_event

MODES = ("terminal", "events", "off")
#: Seconds between redraws of the status line.
INTERVAL = 0.25
#: Clear the line: back to its start, erase to its end.
CLEAR = "\r\x1b[K"

log = logging.getLogger("pooljob")
_current: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "pooljob_progress", default=None
)


def progress_mode(log_format: str, quiet: bool, stream: TextIO | None = None) -> str:
    """``"terminal"`` on a terminal with text logs, ``"events"`` for JSON logs, else ``"off"``."""
    if quiet:
        return "off"
    if log_format == "json":
        return "events"
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        tty = False
    return "terminal" if tty else "off"


def _number(x: float) -> str:
    return f"{x:,.6g}" if abs(x) < 1e6 else f"{x:,.1f}"


class Progress:
    """The run's progress: stage events, and the status line on a terminal."""

    def __init__(
        self, mode: str = "off", stream: TextIO | None = None, interval: float = INTERVAL
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r} is not one of {MODES}")
        self.mode = mode
        self.stream = stream or sys.stderr
        self.interval = interval
        self._lock = threading.RLock()
        self._stage: str | None = None
        self._started = 0.0
        self._text = ""
        self._shown = False
        self._drawn_at = 0.0
        self._probe: Callable[[], float] | None = None
        self._files: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._filter = _ClearLine(self)

    @property
    def terminal(self) -> bool:
        """Whether a status line is drawn (and DuckDB's progress is worth tracking)."""
        return self.mode == "terminal"

    # --- the Watch protocol ------------------------------------------------

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Around the stage ``name``: its events, or its status line."""
        t0 = time.perf_counter()
        if self.mode == "events":
            log_event("stage_start", "stage %s started", name, stage=name)
        elif self.terminal:
            with self._lock:
                self._stage, self._started, self._text = name, t0, ""
                self._draw()
        status = "failed"
        try:
            yield
            status = "ok"
        finally:
            seconds = time.perf_counter() - t0
            if self.mode == "events":
                log_event(
                    "stage_end",
                    "stage %s %s (%.3f s)",
                    name,
                    "ended" if status == "ok" else "failed",
                    seconds,
                    stage=name,
                    seconds=round(seconds, 6),
                    status=status,
                )
            elif self.terminal:
                with self._lock:
                    self._clear()
                    self._stage, self._text = None, ""

    def evaluation(self, evaluations: int, best: float) -> None:
        """The fit's progress: redrawn at most once an ``interval``."""
        if not self.terminal:
            return
        with self._lock:
            self._text = f"{evaluations:,} evaluations, best criterion {_number(best)}"
            if time.perf_counter() - self._drawn_at >= self.interval:
                self._draw()

    # --- the scan's progress -----------------------------------------------

    @contextmanager
    def probing(
        self, probe: Callable[[], float] | None, files: int | None = None
    ) -> Iterator[None]:
        """Poll ``probe`` (DuckDB's ``query_progress``: percent done, −1 if idle) meanwhile.

        ``files``: how many files the scan reads, where known.  The probe is
        dropped before the block ends, so it is not called on a closed
        connection; the one it replaced, if any, is restored.  Shown during
        the ``scan`` stage only.
        """
        if not self.terminal or probe is None:
            yield
            return
        with self._lock:
            before = self._probe, self._files
            self._probe, self._files = probe, files
        try:
            yield
        finally:
            with self._lock:
                self._probe, self._files = before

    # --- drawing -----------------------------------------------------------

    def _status(self) -> str:
        assert self._stage is not None
        text = self._text
        if self._probe is not None and self._stage == "scan":
            try:
                done = float(self._probe())
            except Exception:  # a closing connection: no figure, and no failure
                done = -1.0
            text = f"{done:.0f}% done" if done >= 0 else "reading"
            if self._files is not None:
                text += f" of {self._files:,} file{'' if self._files == 1 else 's'}"
        elapsed = time.perf_counter() - self._started
        line = f"{self._stage}: {text + ' ' if text else ''}({elapsed:.1f} s)"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        return line[: max(width, 10)]

    def _draw(self) -> None:
        if self._stage is None:
            return
        try:
            self.stream.write(CLEAR + self._status())
            self.stream.flush()
        except Exception:  # the terminal went away (or a bug here): never fail the run for it
            self.mode = "off"
            return
        self._shown = True
        self._drawn_at = time.perf_counter()

    def _clear(self) -> None:
        if not self._shown:
            return
        try:
            self.stream.write(CLEAR)
            self.stream.flush()
        except (OSError, ValueError):
            self.mode = "off"
        self._shown = False

    def _tick(self) -> None:
        while not self._stop.wait(self.interval / 2):
            with self._lock:
                due = time.perf_counter() - self._drawn_at >= self.interval
                if self.terminal and self._stage is not None and due:
                    self._draw()

    # --- the run -------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[Progress]:
        """For the run: the redrawing thread, cleared lines before log records; current()."""
        token = _current.set(self)
        handlers = list(log.handlers) if self.terminal else []
        for handler in handlers:
            handler.addFilter(self._filter)
        if self.terminal:
            self._stop.clear()
            self._thread = threading.Thread(target=self._tick, name="pooljob-progress", daemon=True)
            self._thread.start()
        try:
            yield self
        finally:
            if self._thread is not None:
                self._stop.set()
                self._thread.join()
                self._thread = None
            with self._lock:
                self._clear()
                self._stage = None
            for handler in handlers:
                handler.removeFilter(self._filter)
            _current.reset(token)


class _ClearLine(logging.Filter):
    """Clears the status line before a record is written under it (it is redrawn later)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        with self.progress._lock:
            self.progress._clear()
            self.progress._drawn_at = time.perf_counter()  # no redraw before the record is out
        return True


#: The progress of no run: shows nothing.
OFF = Progress("off")


def current() -> Progress:
    """The progress of the run under way in this context (:data:`OFF` if none)."""
    return _current.get() or OFF
