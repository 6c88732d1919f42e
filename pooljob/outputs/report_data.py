"""What the report shows, read from a run directory alone (no matplotlib here).

A run directory holds ``manifest.json`` and the Parquet tables of the output
contract (docs/outputs.md).  This module reads them, orders the groupings
from the coarsest to the finest, finds each group's parent estimate (the
value its estimate is pulled toward) and picks a deterministic subset of
groups when there are too many to draw.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pooljob.errors import ConfigError, InputError
from pooljob.outputs.schema import check_readable

INTERCEPT = "(Intercept)"
RESIDUAL = "Residual"
_TABLES = ("estimates", "coefficients", "components")
_VALUES = ("n", "raw_mean", "estimate", "std_error", "lower", "upper", "shrinkage")


@dataclass(frozen=True)
class RunData:
    """The published files of one run.

    Attributes
    ----------
    directory : Path
    manifest : dict
        ``manifest.json`` as parsed.
    estimates, coefficients, components : polars.DataFrame
        The Parquet tables of the output contract.
    effects : polars.DataFrame or None
        ``effects.parquet`` if present (used for lme4's level labels).
    groupings : tuple of str
        The groupings, coarsest first (the reverse of ``components``' order).
    """

    directory: Path
    manifest: dict[str, Any]
    estimates: pl.DataFrame
    coefficients: pl.DataFrame
    components: pl.DataFrame
    effects: pl.DataFrame | None
    groupings: tuple[str, ...]

    @property
    def family(self) -> str:
        """The model family named in the manifest (``gaussian`` if absent)."""
        return str(self.manifest.get("family") or "gaussian")

    @property
    def key_columns(self) -> list[str]:
        """The grouping key columns of ``estimates`` (between ``grouping`` and ``n``)."""
        cols = self.estimates.columns
        return cols[cols.index("grouping") + 1 : cols.index("n")]

    def own_columns(self, grouping: str) -> tuple[str, ...]:
        """The key columns that define the groups of ``grouping`` (never null in its rows)."""
        rows = self.estimates.filter(pl.col("grouping") == grouping)
        return tuple(c for c in self.key_columns if rows[c].null_count() == 0)

    def overall_mean(self) -> float | None:
        """The intercept on the response scale: the value the coarsest groups pull toward.

        The intercept is on the link scale; it is mapped back with the inverse
        link of the family (identity, logistic, exponential).  ``None`` for a
        family whose link is not known here.
        """
        rows = self.coefficients.filter(pl.col("term") == INTERCEPT)
        if rows.height == 0:
            return None
        eta = float(rows["estimate"][0])
        inverse: dict[str, Callable[[float], float]] = {
            "gaussian": float,
            "binomial": _expit,
            "poisson": math.exp,
        }
        link = inverse.get(self.family)
        return link(eta) if link else None


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def load_run(directory: str | Path) -> RunData:
    """Read a run directory; raise a one-line InputError if it is not one."""
    path = Path(directory)
    if not path.is_dir():
        raise InputError(
            f"run directory {str(path)!r} does not exist or is not a directory; "
            "give a published run such as out/income/current"
        )
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        hint = (
            f"; it looks like an output path, use {str(path / 'current')!r}"
            if (path / "current").exists()
            else "; it holds Delta tables: give it to pooljob report, which reads them"
            if (path / "runs" / "_delta_log").is_dir() or (path / "_delta_log").is_dir()
            else ""
        )
        raise InputError(
            f"{str(path)!r} is not a pooljob run directory: it has no manifest.json{hint}"
        )
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {str(manifest_file)!r}: {exc}") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{str(manifest_file)!r} is not a pooljob manifest (not a JSON object)")
    check_readable(manifest, str(path))
    tables = {name: _read_table(path / f"{name}.parquet") for name in _TABLES}
    effects_file = path / "effects.parquet"
    effects = _read_table(effects_file) if effects_file.is_file() else None
    names = [g for g in tables["components"]["grouping"].to_list() if g and g != RESIDUAL]
    groupings = tuple(reversed(list(dict.fromkeys(names))))
    if not groupings:
        raise InputError(f"{str(path)!r}: components.parquet names no grouping")
    return RunData(path, manifest, effects=effects, groupings=groupings, **tables)


def _read_table(file: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(file)
    except FileNotFoundError:
        raise InputError(
            f"{str(file.parent)!r} is not a complete pooljob run: {file.name} is missing"
        ) from None
    except Exception as exc:  # polars raises several types for damaged files
        raise InputError(f"cannot read {str(file)!r}: {exc}".splitlines()[0]) from None


def resolve_grouping(groupings: tuple[str, ...] | list[str], wanted: str | None) -> str:
    """The grouping to report, by lme4's name or its first column.

    ``zip`` names ``zip:(county:state)`` if no other grouping starts with ``zip``.

    ``None`` means the finest grouping (the last of ``groupings``, coarsest first).
    """
    if not groupings:
        raise ConfigError("the model has no grouping to report on")
    if wanted is None:
        return groupings[-1]
    if wanted in groupings:
        return wanted
    short = [g for g in groupings if g.split(":")[0].strip("()` ") == wanted]
    if len(short) == 1:
        return short[0]
    raise ConfigError(
        f"report grouping {wanted!r} is not a grouping of the model; use one of "
        + ", ".join(repr(g) for g in groupings)
    )


def parent_of(run: RunData, grouping: str) -> str | None:
    """The grouping whose groups contain those of ``grouping`` (by key columns), if any."""
    own = set(run.own_columns(grouping))
    best: tuple[int, str] | None = None
    for other in run.groupings:
        cols = set(run.own_columns(other))
        if other != grouping and cols < own and (best is None or len(cols) > best[0]):
            best = (len(cols), other)
    return best[1] if best else None


def level_frame(run: RunData, grouping: str) -> tuple[pl.DataFrame, str]:
    """The groups of ``grouping`` with ``label``, ``parent`` and ``pull`` columns.

    ``parent`` is the estimate the group is pulled toward: the published
    ``parent`` column (the estimate with the effects of the group's own
    grouping and of those nested in it set to 0).  For runs published
    before that column existed, its parent group's estimate (joined on the
    key columns they share), or the overall mean for the coarsest grouping,
    null where the outputs do not say which group is the parent.  ``pull``
    is ``estimate − raw_mean``.

    Returns
    -------
    frame : polars.DataFrame
    toward : str
        What ``parent`` is, in words (``county:state``, ``the overall mean``).
    """
    published = "parent" in run.estimates.columns
    rows, own = _keyed(run, run.estimates, grouping, *_VALUES, *(["parent"] if published else []))
    rows = _with_labels(run, grouping, own, rows)
    parent = parent_of(run, grouping)
    if published:  # the contract's column: the estimate with no data of its own
        toward = parent or (
            "the overall mean" if grouping == run.groupings[0] else "the rest of the model"
        )
    elif parent is not None:  # runs published before the column existed
        parents, cols = _keyed(run, run.estimates, parent, "estimate")
        parents = parents.rename({"estimate": "parent"})
        rows = rows.join(parents, on=cols, how="left", maintain_order="left")
        toward = parent
    elif grouping == run.groupings[0]:
        overall = run.overall_mean()
        rows = rows.with_columns(pl.lit(overall, dtype=pl.Float64).alias("parent"))
        toward = "the overall mean"
    else:
        rows = rows.with_columns(pl.lit(None, dtype=pl.Float64).alias("parent"))
        toward = "its parent (not named in this grouping's keys)"
    return rows.with_columns((pl.col("estimate") - pl.col("raw_mean")).alias("pull")), toward


def _keyed(
    run: RunData, table: pl.DataFrame, grouping: str, *values: str | pl.Expr
) -> tuple[pl.DataFrame, list[str]]:
    """The rows of ``grouping`` in ``table``: its key columns renamed ``_key<i>``, and ``values``.

    Renaming keeps a key column called, say, ``label`` from clashing with the
    columns the report adds.
    """
    names = {c: f"_key{i}" for i, c in enumerate(run.key_columns)}
    own = run.own_columns(grouping)
    frame = table.filter(pl.col("grouping") == grouping).select(
        *(pl.col(c).alias(names[c]) for c in own), *values
    )
    return frame, [names[c] for c in own]


def _with_labels(run: RunData, grouping: str, keys: list[str], rows: pl.DataFrame) -> pl.DataFrame:
    """Add ``label``: lme4's level label from effects.parquet, else the keys pasted with ``:``."""
    pasted = pl.concat_str([pl.col(c).cast(pl.String) for c in keys], separator=":")
    eff = run.effects
    own = run.own_columns(grouping)
    if eff is None or "level" not in eff.columns or not set(own) <= set(eff.columns):
        return rows.with_columns(pasted.alias("label"))
    labels, _ = _keyed(run, eff, grouping, pl.col("level").cast(pl.String).alias("label"))
    labels = labels.unique(subset=keys, keep="first", maintain_order=True)
    joined = rows.join(labels, on=keys, how="left", maintain_order="left")
    return joined.with_columns(pl.coalesce("label", pasted).alias("label"))


def select_groups(frame: pl.DataFrame, limit: int) -> tuple[pl.DataFrame, str]:
    """A deterministic subset of at most ``limit`` groups, and a caption saying which.

    The quarter smallest groups (ties: those pulled furthest, then by label),
    the quarter largest, and the rest spread evenly over the groups ordered
    by estimate.  No randomness: the same run always gives the same picture.
    """
    total = frame.height
    if total <= limit:
        return frame, f"all {total:,} groups"
    k = max(1, limit // 4)
    ordered = (
        frame.with_columns(pl.col("pull").abs().fill_null(0.0).alias("_abs_pull"))
        .sort(["n", "_abs_pull", "label"], descending=[False, True, False], nulls_last=True)
        .with_row_index("_i")
    )
    rest = ordered.slice(k, total - 2 * k).sort(["estimate", "label"], nulls_last=True)
    m = limit - 2 * k
    spread = np.unique(np.linspace(0, rest.height - 1, m).round().astype(np.int64))
    picked = set(range(k)) | set(range(total - k, total)) | set(rest["_i"].gather(spread))
    subset = ordered.filter(pl.col("_i").is_in(sorted(picked))).drop("_i", "_abs_pull")
    return subset, (
        f"{subset.height:,} of {total:,} groups: the {k} smallest (ties: pulled furthest), "
        f"the {k} largest and {subset.height - 2 * k} spread evenly over the estimates"
    )
