"""Output frames shared by the solvers: effects, coefficients, components.

Every fit of a design (:mod:`pooljob.model.general` for gaussian models,
:mod:`pooljob.outputs.count_tables` for binomial and Poisson ones) writes the same tables
of the output contract (docs/outputs.md); these functions build them from
numpy arrays and the cells' key columns, with no Python object per group.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.model.design import Design

Array = NDArray[np.float64]

COMPONENT_SCHEMA = {
    "grouping": pl.String,
    "term1": pl.String,
    "term2": pl.String,
    "variance": pl.Float64,
    "sd": pl.Float64,
}


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
    """Stack per-grouping frames with every key column (null where not part of the level)."""
    out = []
    for frame in parts:
        frame = frame.with_columns(
            [pl.lit(None, dtype=schema[k]).alias(k) for k in keys if k not in frame.columns]
        )
        out.append(frame.select(lead + keys + tail))
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


def effects_frame(
    design: Design,
    frames: list[pl.DataFrame],
    b: list[Array],
    cond_var: list[Array],
    keys: list[str],
    schema: Any,
) -> pl.DataFrame:
    """lme4's ``ranef(m, condVar = TRUE)``: per grouping, level and term (design order)."""
    parts = []
    for d, (block, frame) in enumerate(zip(design.blocks, frames, strict=True)):
        label = frame.select(level_label(block.grouping.columns).alias("level"))["level"]
        for i, col in enumerate(block.columns):
            parts.append(
                frame.with_columns(
                    pl.lit(block.grouping.name).alias("grouping"),
                    label.alias("level"),
                    pl.lit(col.name).alias("term"),
                    pl.Series("estimate", b[d][:, i]),
                    pl.Series("cond_sd", np.sqrt(np.maximum(cond_var[d][:, i, i], 0.0))),
                )
            )
    return align(parts, ["grouping", "level"], keys, schema, ["term", "estimate", "cond_sd"])


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


def intercept_shrinkage(design: Design, d: int, prior: Array, cond_var: Array) -> Array:
    """``Var(b | y) / Var(b)`` of grouping d's random intercept; NaN without one."""
    block = design.blocks[d]
    intercept = [i for i, c in enumerate(block.columns) if c.variable == 0 and not c.spec]
    if not intercept:
        return np.full(len(cond_var), np.nan)
    i = intercept[0]
    if prior[i, i] > 0:
        return np.asarray(cond_var[:, i, i] / prior[i, i])
    return np.ones(len(cond_var))


def estimates_part(
    keys: pl.DataFrame,
    grouping: str,
    columns: dict[str, NDArray[Any]],
) -> pl.DataFrame:
    """One grouping's rows of ``estimates.parquet``: its key columns, then ``ESTIMATE_COLUMNS``.

    ``columns`` maps each name of ``ESTIMATE_COLUMNS`` to its values (``n``
    is rounded to an integer).
    """
    return keys.with_columns(
        pl.lit(grouping).alias("grouping"),
        *(
            pl.Series(name, columns[name].round().astype(np.int64))
            if name == "n"
            else pl.Series(name, columns[name])
            for name in ESTIMATE_COLUMNS
        ),
    )


#: The per-group columns of ``estimates.parquet`` after the key columns.
ESTIMATE_COLUMNS = ("n", "raw_mean", "estimate", "std_error", "lower", "upper", "shrinkage")
