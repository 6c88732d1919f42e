"""HTML building blocks of the report: escaped tables, figures and the page.

Every piece of text from a run (labels, config values, messages) goes
through ``html.escape``; the page has its style inline and links to nothing,
so the file opens offline.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f6f4; color: #1d1d1b; font-size: 15px; line-height: 1.5;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1060px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 1.5em; margin: 0.2em 0; font-family: ui-monospace, Menlo, Consolas, monospace; }
h2 { font-size: 1.2em; margin: 1.8em 0 0.5em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1em; margin: 1.4em 0 0.4em; }
p.sub, p.note { color: #555; margin: 0.3em 0; }
figure { margin: 1em 0 1.6em; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { color: #444; font-size: 0.9em; margin-top: 0.4em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 3px 12px 3px 0; text-align: left;
  vertical-align: top; }
th { font-weight: 600; color: #333; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.flag-bad { color: #b00020; font-weight: 600; }
.grid { display: flex; flex-wrap: wrap; gap: 0 36px; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.9em; }
footer { margin-top: 3em; color: #777; font-size: 0.85em; }
"""


def esc(text: object) -> str:
    """``html.escape`` of ``str(text)`` (quotes too)."""
    return html.escape(str(text), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A value as short text: thousands separators, ``digits`` significant digits below 10⁴."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value) or value == 0:
            return str(value) if value else "0"
        return f"{value:,.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v, digits) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _cell(value: Any, digits: int, align: bool = True) -> str:
    numeric = align and isinstance(value, int | float) and not isinstance(value, bool)
    cls = ' class="num"' if numeric else ""
    return f"<td{cls}>{esc(fmt(value, digits))}</td>"


def table(
    header: Sequence[str] | None,
    rows: Iterable[Sequence[Any]],
    digits: int = 4,
    align_numbers: bool = True,
) -> str:
    """An HTML table; every cell is formatted with :func:`fmt` and escaped.

    Numbers are right-aligned unless ``align_numbers`` is false.
    """
    head = (
        "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>"
        if header
        else ""
    )
    body = "".join(
        "<tr>" + "".join(_cell(v, digits, align_numbers) for v in row) + "</tr>" for row in rows
    )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def frame_table(frame: pl.DataFrame, digits: int = 4) -> str:
    """A polars DataFrame as an HTML table, all of its columns."""
    return table(frame.columns, frame.rows(), digits)


def pairs_table(pairs: Iterable[tuple[str, Any]], digits: int = 4) -> str:
    """A two-column table of names and values (all left-aligned)."""
    return table(None, pairs, digits, align_numbers=False)


def figure(svg: str, caption: str) -> str:
    """An inline SVG figure with an escaped caption."""
    return f"<figure>{svg}<figcaption>{esc(caption)}</figcaption></figure>"


def section(title: str, *parts: str) -> str:
    """A titled section."""
    return f"<section><h2>{esc(title)}</h2>{''.join(parts)}</section>"


def paragraph(text: str, cls: str = "note") -> str:
    """An escaped paragraph."""
    return f'<p class="{cls}">{esc(text)}</p>'


def page(title: str, heading: str, body: str) -> str:
    """The whole self-contained document."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{esc(heading)}</h1>\n{body}\n"
        "<footer>Made by pooljob from the files of this run directory; "
        "self-contained, it needs no network.</footer>\n</main>\n</body>\n</html>\n"
    )
