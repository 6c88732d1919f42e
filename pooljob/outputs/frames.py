"""Output frames shared by the solvers: effects, coefficients, components.

Every fit of a design (:mod:`pooljob.model.general` for gaussian models,
:mod:`pooljob.outputs.count_tables` for binomial and Poisson ones) writes the same tables
of the output contract (docs/outputs.md); these functions build them from
numpy arrays and the cells' key columns, with no Python object per group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.errors import InputError
from pooljob.model.design import Design

Array = NDArray[np.float64]

COMPONENT_SCHEMA = {
    "grouping": pl.String,
    "term1": pl.String,
    "term2": pl.String,
    "variance": pl.Float64,
    "sd": pl.Float64,
}


#: The per-group columns of ``estimates.parquet`` after ``grouping`` and the key columns.
ESTIMATE_COLUMNS = (
    "n",
    "raw_mean",
    "estimate",
    "parent",
    "std_error",
    "lower",
    "upper",
    "shrinkage",
    "rmse",
    "estimate_unbenchmarked",
)

#: Columns of the published tables that a key column must not shadow (compared
#: case-insensitively, as DuckDB compares identifiers): those of estimates.parquet,
#: effects.parquet (``level``, ``term``, ``cond_sd``), poststratified.parquet
#: (``population``), predictions.parquet (``unseen``) and every Delta table (``run_id``).
RESERVED = frozenset(
    {"grouping", *ESTIMATE_COLUMNS, "level", "term", "cond_sd", "population", "unseen", "run_id"}
)


def published_names(keys: Iterable[str]) -> dict[str, str]:
    """Each key column's name in the published tables.

    A key column keeps its name unless that name (in any case) is a column of
    the tables (``RESERVED``); then ``_key`` is appended, as often as needed
    to differ from every other column: a grouping column ``level`` is
    published as ``level_key``, ``n`` as ``n_key`` (``n_key_key`` if the data
    also has an ``n_key``).  The same in every table of a run.
    """
    keys = list(keys)
    taken = {k.lower() for k in keys} | RESERVED
    out = {}
    for k in keys:
        name = k
        if k.lower() in RESERVED:
            name = k + "_key"
            while name.lower() in taken:
                name += "_key"
            taken.add(name.lower())
        out[k] = name
    return out


def cast_keys(
    table: pl.DataFrame,
    types: dict[str, Any],
    where: str,
    shown: dict[str, str] | None = None,
) -> pl.DataFrame:
    """``table`` with each column of ``types`` cast to its type (the sample's keys').

    Raises
    ------
    InputError
        A column whose values do not convert (a null after the cast), named as
        in ``shown`` (the user's column name) if given.
    """
    for col, dtype in types.items():
        if table[col].dtype == dtype:
            continue
        cast = table[col].cast(dtype, strict=False)
        if int(cast.is_null().sum()):
            name = (shown or {}).get(col, col)
            raise InputError(
                f"{where}: column {name!r} has type {table[col].dtype} but the sample's is "
                f"{dtype}, and its values do not convert; make the types match"
            )
        table = table.with_columns(cast.alias(col))
    return table


def level_label(columns: tuple[str, ...]) -> pl.Expr:
    """The ``level`` of a group as lme4 prints it: its key values joined by ``:``."""
    return pl.concat_str(
        [pl.col(c).map_batches(_key_text, return_dtype=pl.String) for c in columns],
        separator=":",
    )


def _key_text(values: pl.Series) -> pl.Series:
    """Key values as text; booleans as R prints a logical factor's levels (``FALSE``, ``TRUE``)."""
    text = values.cast(pl.String)
    return text.str.to_uppercase() if values.dtype == pl.Boolean else text


def level_keys(
    keys: pl.DataFrame, columns: tuple[str, ...], code: NDArray[np.int64]
) -> pl.DataFrame:
    """The key columns of each level of one grouping (from the first cell of each).

    ``code`` gives each cell's level, ``0 … q−1``.
    """
    first = np.zeros(int(code.max()) + 1, dtype=np.int64)
    first[code[::-1]] = np.arange(len(code))[::-1]
    return keys.select(list(columns))[first]


def align(
    parts: list[pl.DataFrame], lead: list[str], keys: list[str], schema: Any, tail: list[str]
) -> pl.DataFrame:
    """Stack per-grouping frames with every key column (null where not part of the level).

    ``keys`` are the source's key columns and ``schema`` their types; in
    ``parts`` they carry their :func:`published_names`.
    """
    names = published_names(keys)
    out = []
    for frame in parts:
        frame = frame.with_columns(
            [
                pl.lit(None, dtype=schema[k]).alias(names[k])
                for k in keys
                if names[k] not in frame.columns
            ]
        )
        out.append(frame.select(lead + [names[k] for k in keys] + tail))
    return pl.concat(out, how="vertical") if out else pl.DataFrame()


def coefficients_frame(names: list[str], beta: Array, vcov: Array) -> pl.DataFrame:
    """lme4's ``fixef`` with ``sqrt(diag(vcov))``."""
    return pl.DataFrame(
        {
            "term": names,
            "estimate": beta,
            "std_error": np.sqrt(np.maximum(np.diag(vcov), 0.0)),
        },
        schema={"term": pl.String, "estimate": pl.Float64, "std_error": pl.Float64},
    )


@dataclass(frozen=True)
class GroupingEffects:
    """The conditional modes of one grouping's random effects (lme4's ``ranef``).

    Attributes
    ----------
    name : str
        lme4's name of the grouping.
    columns : tuple of str
        Its key columns (the ``level`` label joins their values with ``:``).
    keys : polars.DataFrame
        One row per level: its key columns.
    terms : list of str
        The random terms (``(Intercept)``, ``x``).
    estimate, cond_sd : ndarray, shape (q, len(terms))
        Conditional modes and their conditional standard deviations.
    """

    name: str
    columns: tuple[str, ...]
    keys: pl.DataFrame
    terms: list[str]
    estimate: Array
    cond_sd: Array


def effects_table(groups: list[GroupingEffects], keys: list[str], schema: Any) -> pl.DataFrame:
    """``effects.parquet``: per grouping, level and term, in the order given."""
    parts = []
    names = published_names(keys)
    for g in groups:
        label = g.keys.select(level_label(g.columns).alias("level"))["level"]
        frame = g.keys.rename({c: names[c] for c in g.keys.columns})
        for i, term in enumerate(g.terms):
            parts.append(
                frame.with_columns(
                    pl.lit(g.name).alias("grouping"),
                    label.alias("level"),
                    pl.lit(term).alias("term"),
                    pl.Series("estimate", g.estimate[:, i], dtype=pl.Float64),
                    pl.Series("cond_sd", g.cond_sd[:, i], dtype=pl.Float64),
                )
            )
    return align(parts, ["grouping", "level"], keys, schema, ["term", "estimate", "cond_sd"])


def effects_frame(
    design: Design,
    frames: list[pl.DataFrame],
    b: list[Array],
    cond_var: list[Array],
    keys: list[str],
    schema: Any,
) -> pl.DataFrame:
    """lme4's ``ranef(m, condVar = TRUE)`` of a design's blocks (design order)."""
    return effects_table(
        [
            GroupingEffects(
                name=block.grouping.name,
                columns=block.grouping.columns,
                keys=frame,
                terms=[c.name for c in block.columns],
                estimate=b[d],
                cond_sd=np.sqrt(np.maximum(np.diagonal(cond_var[d], axis1=1, axis2=2), 0.0)),
            )
            for d, (block, frame) in enumerate(zip(design.blocks, frames, strict=True))
        ],
        keys,
        schema,
    )


def components_frame(
    design: Design, covariance: list[Array], levels: list[int], residual: float | None
) -> pl.DataFrame:
    """lme4's ``as.data.frame(VarCorr(m))``.

    Groupings by decreasing number of levels (lme4's order); per term its
    variances, then covariances (``variance``) with correlations (``sd``);
    last the residual row, when the family has one.  ``covariance`` and
    ``levels`` are in design order.
    """
    rows: list[dict[str, Any]] = []
    for d in sorted(range(len(design.blocks)), key=lambda d: -levels[d]):
        block = design.blocks[d]
        cov = covariance[d]
        for t, name in enumerate(block.term_names):
            cols = [i for i, k in enumerate(block.term_of) if k == t]
            for i in cols:
                rows.append(
                    {
                        "grouping": name,
                        "term1": block.columns[i].name,
                        "term2": None,
                        "variance": float(cov[i, i]),
                        "sd": float(np.sqrt(max(cov[i, i], 0.0))),
                    }
                )
            for a, i in enumerate(cols):
                for j in cols[a + 1 :]:
                    sd = np.sqrt(max(cov[i, i], 0.0) * max(cov[j, j], 0.0))
                    rows.append(
                        {
                            "grouping": name,
                            "term1": block.columns[i].name,
                            "term2": block.columns[j].name,
                            "variance": float(cov[i, j]),
                            "sd": float(cov[i, j] / sd) if sd > 0 else float("nan"),
                        }
                    )
    if residual is not None:
        rows.append(
            {
                "grouping": "Residual",
                "term1": None,
                "term2": None,
                "variance": residual,
                "sd": float(np.sqrt(residual)),
            }
        )
    return pl.DataFrame(rows, schema=COMPONENT_SCHEMA, orient="row")


def intercept_shrinkage(design: Design, d: int, prior: Array, cond_var: Array) -> Array | None:
    """``Var(b | y) / Var(b)`` of grouping d's random intercept; None without one.

    lme4's ``condVar`` of the intercept over its variance (``σ²/(σ² + n τ²)``
    in the one-way model); 1 where the variance is 0 (fully pooled).
    """
    block = design.blocks[d]
    intercept = [i for i, c in enumerate(block.columns) if c.variable == 0 and not c.spec]
    if not intercept:
        return None
    i = intercept[0]
    if prior[i, i] > 0:
        return np.asarray(cond_var[:, i, i] / prior[i, i])
    return np.ones(len(cond_var))
