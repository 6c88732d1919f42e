"""``report.html``: the shrinkage pictures and the run's tables in one self-contained file.

Built from a run directory alone (``manifest.json`` and the Parquet outputs),
so it works both inside a job (``[output] report = true``, written into the
run before it is published) and afterwards (``pooljob report RUN_DIR``,
written outside the run, which never changes once published).
Figures are inline SVG; the page has no scripts and links to nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from pooljob.errors import PublishError
from pooljob.outputs.report_data import (
    RESIDUAL,
    RunData,
    level_frame,
    load_run,
    resolve_grouping,
    select_groups,
)
from pooljob.outputs.report_figures import (
    RASTER_ABOVE,
    caterpillar_figure,
    pull_figure,
    require_matplotlib,
    shrinkage_figure,
    svg_text,
)
from pooljob.outputs.report_html import (
    esc,
    figure,
    fmt,
    frame_table,
    page,
    pairs_table,
    paragraph,
    section,
    table,
)

REPORT = "report.html"
PULL_LIMIT = 40  # groups drawn in the pull figure of the chosen grouping
CATERPILLAR_LIMIT = 60
OTHER_LIMIT = 30  # groups drawn for each of the other groupings
TOP_PULLED = 12


def write_report(
    run_dir: str | Path, grouping: str | None = None, output: str | Path | None = None
) -> Path:
    """Write the report of ``run_dir`` (a temporary file, then ``os.replace``).

    Parameters
    ----------
    run_dir : str or Path
        A run directory (``out/…/current`` or ``out/…/runs/<run_id>``).
    grouping : str, optional
        The grouping to draw (lme4's name or its first column); default the finest.
    output : str or Path, optional
        The file to write.  Default ``run_dir/report.html``: for a job's run
        before it is published only, since a published run never changes
        (``pooljob report`` writes elsewhere).

    Returns
    -------
    Path
        The report file.
    """
    text = build_report(run_dir, grouping)
    target = Path(run_dir) / REPORT if output is None else Path(output)
    tmp = target.with_name(f".{REPORT}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise PublishError(
            f"cannot write {str(target)!r}: {exc.strerror or exc}; the run was left as it was"
        ) from None
    return target


def build_report(run_dir: str | Path, grouping: str | None = None) -> str:
    """The report of a run directory as one HTML document."""
    run = load_run(run_dir)
    chosen = resolve_grouping(run.groupings, grouping)
    require_matplotlib()
    m = run.manifest
    formula = str(m.get("formula", "model"))
    response = formula.split("~")[0].strip().strip("`") or "response"
    sub = (
        f"{m.get('family', 'gaussian')}, {str(m.get('method', '')).upper()} · run "
        f"{m.get('run_id', run.directory.name)} · finished {m.get('finished_at', '?')}"
    )
    body = [
        f'<p class="sub">{esc(sub)}</p>',
        _overview(run),
        _pooling(run, chosen, response),
        _other_groupings(run, chosen, response),
        _model_tables(run),
        _diagnostics(m),
        _rows_and_times(m),
        _configuration(m),
    ]
    return page(f"pooljob report: {formula}", formula, "\n".join(body))


def _overview(run: RunData) -> str:
    m = run.manifest
    groups = m.get("groups") or {}
    criterion = {
        "reml": "REML criterion",
        "laplace": "−2 log L (Laplace)",
    }.get(str(m.get("method")), "deviance (−2 log L)")
    flags = []
    if m.get("converged") is False:
        flags.append("the optimizer did NOT converge")
    if m.get("singular"):
        flags.append("the fit is singular: a variance component is 0")
    pairs: list[tuple[str, Any]] = [
        ("observations used", m.get("nobs")),
        ("groups", ", ".join(f"{g} {fmt(k)}" for g, k in groups.items()) or None),
        (criterion, _precise(m.get("objective"))),
        ("log-likelihood", _precise(m.get("loglik"))),
        ("residual SD", m.get("sigma") if m.get("family", "gaussian") == "gaussian" else None),
        ("interval coverage", m.get("interval")),
        ("interval method", m.get("interval_method")),
    ]
    warn = "".join(f'<p class="flag-bad">{esc(f)}</p>' for f in flags)
    return warn + pairs_table(pairs)


def _method_note(run: RunData) -> str:
    """``lower``/``upper``'s method, when it is not the plug-in one."""
    if run.manifest.get("interval_method") == "prasad-rao":
        return "; Prasad–Rao: from rmse, the variance components' uncertainty included"
    return ""


def _precise(x: Any) -> Any:
    return f"{x:,.6f}" if isinstance(x, float) else x


def _pooling(run: RunData, chosen: str, response: str) -> str:
    frame, toward = level_frame(run, chosen)
    n_max = int(frame["n"].max() or 1)  # type: ignore[arg-type]
    scale = "" if run.family == "gaussian" else " Estimates are on the response scale."
    overall = run.overall_mean()
    pulled, pull_note = select_groups(frame, PULL_LIMIT)
    cat, cat_note = select_groups(frame, CATERPILLAR_LIMIT)
    interval = run.manifest.get("interval")
    curve = _curve(run, chosen)
    parts = [
        paragraph(
            "Each group's estimate blends its own mean with its parent's estimate; the weight "
            "of the parent is the shrinkage (0 = the group's own data, 1 = fully pooled). "
            "Small groups are pulled most." + scale
        ),
        figure(
            svg_text(pull_figure(pulled, response, toward, overall, n_max), "f1"),
            f"Raw means (open circles, area by n) and partially pooled estimates (filled) of "
            f"{chosen}; each arrow is the pull toward {toward} (bar). Showing {pull_note}."
            + _above_note(run, chosen),
        ),
        figure(
            svg_text(caterpillar_figure(cat, response, _float(interval)), "f2"),
            f"Estimates of {chosen} with their {_float(interval) or 0.95:.0%} intervals "
            f"(lower, upper{_method_note(run)}), sorted; crosses are the raw means. "
            f"Showing {cat_note}.",
        ),
        _area_shrinkage(run, frame)
        if run.manifest.get("sampling_variance")
        else figure(
            svg_text(shrinkage_figure(frame, curve), "f3"),
            f"Shrinkage against group size for all {frame.height:,} groups of {chosen}"
            + (
                f" (drawn as an image above {RASTER_ABOVE:,} points)"
                if frame.height > RASTER_ABOVE
                else ""
            )
            + ("; the line is σ² / (σ² + n τ²) with the fitted variances." if curve else "."),
        ),
        "<h3>Groups pulled furthest</h3>",
        _top_pulled(frame),
    ]
    return section(f"Partial pooling: {chosen}", *parts)


def _area_shrinkage(run: RunData, frame: pl.DataFrame) -> str:
    """An area-level model's shrinkage in words: it follows the areas' sampling variances.

    Every area is one row (``n`` = 1), so a picture against ``n`` would say
    nothing; the shrinkage is ``v_i / (v_i + τ²)``, the known sampling
    variance's share (docs/outputs.md).
    """
    column = str(run.manifest.get("sampling_variance"))
    values = frame["shrinkage"].drop_nulls()
    spread = (
        f" Here it runs from {float(values.min()):.3f} to {float(values.max()):.3f} "  # type: ignore[arg-type]
        f"(median {float(values.median()):.3f}) over the {frame.height:,} areas."  # type: ignore[arg-type]
        if values.len()
        else ""
    )
    return paragraph(
        "Area-level (Fay–Herriot) model: each area is one direct estimate with a known "
        f"sampling variance v_i (column {column}), so its shrinkage is v_i / (v_i + τ²), "
        "the share of its sampling variance in the total: the noisier the direct "
        "estimate, the more it is pulled toward the synthetic estimate." + spread
    )


def _above_note(run: RunData, grouping: str) -> str:
    if grouping == run.groupings[-1]:
        return ""
    return (
        " Above the finest level a group's own data are summarised by its children's "
        "estimates, so its estimate need not lie between its raw mean and its parent."
    )


def _float(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _curve(run: RunData, grouping: str) -> tuple[float, float] | None:
    """(σ², τ²) when ``σ² / (σ² + n τ²)`` is the exact shrinkage.

    That is the finest grouping of a Gaussian random-intercept model: one
    components row for the grouping (no slopes) and a residual variance,
    without observation weights (with them the shrinkage follows the
    group's weight sum, which is not published, not its rows ``n``).
    """
    if run.family != "gaussian" or grouping != run.groupings[-1]:
        return None
    if run.manifest.get("weights") is not None:
        return None
    comp = run.components
    own = comp.filter(pl.col("grouping") == grouping)["variance"].to_list()
    residual = comp.filter(pl.col("grouping") == RESIDUAL)["variance"].to_list()
    if len(own) != 1 or len(residual) != 1 or own[0] is None or not residual[0]:
        return None
    return float(residual[0]), float(own[0])


def _top_pulled(frame: pl.DataFrame) -> str:
    top = frame.sort(
        [pl.col("pull").abs(), pl.col("label")], descending=[True, False], nulls_last=True
    ).head(TOP_PULLED)
    cols = ["label", "n", "raw_mean", "estimate", "parent", "shrinkage", "lower", "upper"]
    header = ["group", "n", "raw mean", "estimate", "parent", "shrinkage", "lower", "upper"]
    return table(header, top.select(cols).rows())


def _other_groupings(run: RunData, chosen: str, response: str) -> str:
    figs = []
    for k, grouping in enumerate(g for g in run.groupings if g != chosen):
        frame, toward = level_frame(run, grouping)
        n_max = int(frame["n"].max() or 1)  # type: ignore[arg-type]
        subset, note = select_groups(frame, OTHER_LIMIT)
        svg = svg_text(pull_figure(subset, response, toward, run.overall_mean(), n_max), f"g{k}")
        figs.append(
            figure(
                svg,
                f"{grouping}: raw means pulled toward {toward}. Showing {note}."
                + _above_note(run, grouping),
            )
        )
    return section("Other groupings", *figs) if figs else ""


def _model_tables(run: RunData) -> str:
    return section(
        "Model",
        "<h3>Variance components</h3>",
        frame_table(run.components),
        "<h3>Fixed effects</h3>",
        frame_table(run.coefficients),
    )


def _diagnostics(m: dict[str, Any]) -> str:
    opt = m.get("optimizer") or {}
    pairs: list[tuple[str, Any]] = [
        ("converged", m.get("converged")),
        ("singular", m.get("singular")),
    ]
    pairs += [(str(k), _precise(v)) for k, v in opt.items()] if isinstance(opt, dict) else []
    return section("Fit diagnostics", pairs_table(pairs, digits=6))


def _rows_and_times(m: dict[str, Any]) -> str:
    rows = m.get("rows") or {}
    dropped = rows.get("dropped") or {}
    row_pairs: list[tuple[str, Any]] = [("read", rows.get("read")), ("used", rows.get("used"))]
    row_pairs += [(f"dropped: {k.replace('_', ' ')}", v) for k, v in dropped.items()]
    times = m.get("timings_seconds") or {}
    time_pairs = [(str(k), f"{v:.3f} s" if isinstance(v, float) else v) for k, v in times.items()]
    return section(
        "Rows and run time",
        '<div class="grid"><div><h3>Rows</h3>',
        pairs_table(row_pairs),
        "</div><div><h3>Run time per stage</h3>",
        pairs_table(time_pairs),
        "</div></div>",
    )


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _flatten(f"{prefix}.{k}" if prefix else k, v)]
    return [(prefix, value)]


def _configuration(m: dict[str, Any]) -> str:
    config = [
        (k, json.dumps(v, ensure_ascii=False) if isinstance(v, str) else v)
        for k, v in _flatten("", m.get("config"))
    ]
    versions = list((m.get("versions") or {}).items())
    return section(
        "Configuration",
        paragraph(f"config file: {m.get('config_file', '?')}"),
        pairs_table(config),
        "<h3>Versions</h3>",
        pairs_table(versions),
    )
