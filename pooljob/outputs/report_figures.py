"""The report's figures, drawn with matplotlib and returned as inline SVG text.

matplotlib is an optional extra (``pip install 'pooljob[report]'``): it is
imported here lazily, never by the rest of pooljob.  Figures are built on
``matplotlib.figure.Figure`` directly (no pyplot, no global figure state),
with the Agg backend selected for headless use.  The SVG is made
deterministic (fixed id salt, no date) and its ids are prefixed per figure,
so several figures can live in one HTML page.
"""

from __future__ import annotations

import io
import re
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from pooljob.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

RAW = "#d95f02"  # raw group means
POOLED = "#1b9e77"  # partially pooled estimates
PARENT = "#333333"  # the parent's estimate
OVERALL = "#7570b3"  # the overall mean
RASTER_ABOVE = 2000  # scatter plots with more points are embedded as an image
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


def require_matplotlib() -> None:
    """Import matplotlib (Agg backend) or raise a one-line ConfigError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "the report needs matplotlib, which is not installed; "
            "install it with: pip install 'pooljob[report]'"
        ) from None
    if "matplotlib.pyplot" not in sys.modules:  # do not switch an interactive user's backend
        matplotlib.use("Agg")


def _figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def svg_text(fig: Figure, prefix: str) -> str:
    """The figure as an ``<svg>`` element for inline HTML.

    The XML prolog, namespaces (HTML needs none) and metadata are dropped, and
    every ``id`` and reference to it is prefixed with ``prefix``.
    """
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "pooljob", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata=_NO_METADATA)
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    return re.sub(r'(href="#|url\(#)([^")]+)', rf"\g<1>{prefix}-\2", text)


def _sizes(n: np.ndarray, n_max: float) -> np.ndarray:
    """Marker areas (points²) growing with the square root of the group size."""
    return 14.0 + 220.0 * np.sqrt(np.asarray(n, dtype=float) / max(n_max, 1.0))


def _label_rows(ax: Axes, frame: pl.DataFrame) -> np.ndarray:
    y = np.arange(frame.height, dtype=float)
    ticks = [f"{lab}  (n={n:,})" for lab, n in zip(frame["label"], frame["n"], strict=True)]
    ax.set_yticks(y, ticks, fontsize=7.5)
    ax.set_ylim(frame.height - 0.5, -0.5)
    ax.xaxis.set_major_formatter("{x:,g}")
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    return y


def _size_legend(ax: Axes, n_max: int) -> tuple[list[Any], list[str]]:
    values = sorted({1, max(1, round(float(np.sqrt(n_max)))), n_max})
    return [
        ax.scatter([], [], s=_sizes(np.array([v]), n_max), facecolors="none", edgecolors=RAW)
        for v in values
    ], [f"n = {v:,}" for v in values]


def pull_figure(
    frame: pl.DataFrame, response: str, toward: str, overall: float | None, n_max: int
) -> Figure:
    """Raw group means and their pooled estimates, an arrow for each pull toward the parent.

    Groups with the same parent are drawn together; point area grows with n.
    """
    rows = frame.sort(["parent", "raw_mean", "label"], nulls_last=True)
    fig = _figure(9.0, 1.6 + 0.24 * rows.height)
    ax = fig.add_subplot()
    y = _label_rows(ax, rows)
    raw, est = rows["raw_mean"].to_numpy(), rows["estimate"].to_numpy()
    size = _sizes(rows["n"].to_numpy(), n_max)
    span = float(np.nanmax(np.r_[raw, est]) - np.nanmin(np.r_[raw, est])) or 1.0
    for yi, r, e in zip(y, raw, est, strict=True):
        if abs(e - r) > 0.004 * span:
            ax.annotate(
                "",
                xy=(e, yi),
                xytext=(r, yi),
                arrowprops={"arrowstyle": "-|>", "color": POOLED, "lw": 1.1, "shrinkB": 4},
            )
    ax.scatter(raw, y, s=size, facecolors="none", edgecolors=RAW, linewidths=1.2, zorder=3)
    ax.scatter(est, y, s=size * 0.5, color=POOLED, zorder=4)
    handles: list[Any] = [
        ax.scatter([], [], s=40, facecolors="none", edgecolors=RAW, label="raw mean"),
        ax.scatter([], [], s=20, color=POOLED, label="pooled estimate"),
    ]
    parent = rows["parent"].to_numpy()
    if np.isfinite(parent.astype(float)).any():
        handles.append(
            ax.scatter(parent, y, marker="|", s=130, color=PARENT, zorder=2, label="parent")
        )
    if overall is not None:
        handles.append(ax.axvline(overall, ls="--", lw=1, color=OVERALL, label="overall mean"))
    size_handles, size_labels = _size_legend(ax, n_max)
    ax.legend(
        handles + size_handles,
        [str(h.get_label()) for h in handles] + size_labels,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )
    ax.set_xlabel(f"mean {response}: raw → partially pooled (pulled toward {toward})")
    return fig


def caterpillar_figure(frame: pl.DataFrame, response: str, interval: float | None) -> Figure:
    """Estimates with their intervals (``lower``, ``upper``), sorted, and the raw means."""
    rows = frame.sort(["estimate", "label"], nulls_last=True)
    fig = _figure(9.0, 1.4 + 0.2 * rows.height)
    ax = fig.add_subplot()
    y = _label_rows(ax, rows)
    est = rows["estimate"].to_numpy()
    lo = np.clip(est - rows["lower"].to_numpy(), 0.0, None)
    hi = np.clip(rows["upper"].to_numpy() - est, 0.0, None)
    cover = f"{interval:.0%} interval" if interval else "interval"
    ax.errorbar(
        est,
        y,
        xerr=[lo, hi],
        fmt="o",
        ms=3.5,
        color=POOLED,
        elinewidth=1.2,
        label=f"estimate, {cover}",
    )
    ax.scatter(rows["raw_mean"].to_numpy(), y, marker="x", s=16, color=RAW, label="raw mean")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_xlabel(f"mean {response}")
    return fig


def shrinkage_figure(frame: pl.DataFrame, curve: tuple[float, float] | None) -> Figure:
    """Shrinkage (0 = own data, 1 = the parent) against group size, log scale.

    ``curve`` = (σ², τ²) draws ``σ² / (σ² + n τ²)``, exact for the finest level
    of a Gaussian model.
    """
    fig = _figure(9.0, 4.2)
    ax = fig.add_subplot()
    n = frame["n"].to_numpy().astype(float)
    s = frame["shrinkage"].to_numpy().astype(float)
    many = frame.height > RASTER_ABOVE
    ax.scatter(
        n,
        s,
        s=10 if many else 22,
        alpha=0.35 if many else 0.7,
        color=POOLED,
        edgecolors="none",
        rasterized=many,
        label="groups",
    )
    if curve is not None and n.size:
        sigma2, tau2 = curve
        grid = np.geomspace(1.0, max(float(np.nanmax(n)), 2.0), 200)
        ax.plot(
            grid, sigma2 / (sigma2 + grid * tau2), color=PARENT, lw=1.2, label="σ² / (σ² + n τ²)"
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter("{x:,g}")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("rows in the group, n (log scale)")
    ax.set_ylabel("shrinkage (1 = fully pooled)")
    ax.grid(color="#e5e5e5", linewidth=0.8)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return fig
