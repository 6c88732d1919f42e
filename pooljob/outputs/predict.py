"""Scoring new cells: one prediction per row of a given table (``predictions``).

A prediction is a poststratification with weight 1 and every row its own
group (:mod:`pooljob.outputs.poststratify`), so the estimate, its
uncertainty and the treatment of unseen levels are the same: ``estimate`` is
``m(x'β̂ + Σ z'b̂)`` (a Gaussian mean, a probability, or a Poisson rate per
unit of exposure), an unseen level's effect is its prior mean 0 and its
prior variance enters the uncertainty (exactly for Gaussian models, by
draws for binomial and Poisson ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pooljob.errors import InputError
from pooljob.model.options import PoststratifyConfig, PredictConfig
from pooljob.outputs.frames import published_names
from pooljob.outputs.poststratify import (
    Predictor,
    _level_index,
    check_cells,
    model_columns,
    poststratify,
)
from pooljob.scan.source import open_data, quote_identifier

#: Rows predicted at a time (the draws hold draws × rows doubles).
ROW_CHUNK = 5_000
#: The columns after the model's, in this order.
NUMBERS = ("estimate", "std_error", "lower", "upper")
#: Names of pooljob's own working columns (no user column is named like them).
_WEIGHT, _ROW = "\x00pooljob_weight", "\x00pooljob_row"


def require_cells(config: PredictConfig) -> None:
    """Fail before the scan when the table to score is missing."""
    if "://" in config.path or any(ch in config.path for ch in "*?["):
        return
    if not Path(config.path).exists():
        raise InputError(f"table to predict {config.path!r} does not exist: check [predict] path")


def read_cells(pred: Predictor, config: PredictConfig, data: Any = None) -> pl.DataFrame:
    """Read and check the table to score: the model's columns, in the table's order.

    ``data``, when given, is the table itself (any input of :func:`pooljob.fit`);
    ``config.path`` then only names it in messages.

    Raises
    ------
    InputError
        No rows, a missing column (naming those available), a null model
        column, or a level of a fixed-effect column the sample never saw.
    """
    if pred.formula.offsets:
        raise InputError(
            "prediction for a model with offset(col) is not supported: the cells would need "
            "the offset; use offset(log(exposure)) for rates (predicted per unit of exposure)"
        )
    keys, numeric = model_columns(pred)
    wanted = list(dict.fromkeys([*keys, *numeric]))
    where = f"table to predict {config.path!r}"
    if data is None:
        require_cells(config)
    with open_data(config.path if data is None else data) as source:
        source.require(tuple(wanted))
        sql = "select " + ", ".join(quote_identifier(c) for c in wanted) + " from source"
        table = pl.from_arrow(source.arrow(sql))
    assert isinstance(table, pl.DataFrame)
    if not table.height:
        raise InputError(f"{where} has no rows")
    return check_cells(pred, table, keys, numeric, where)


def _unseen(pred: Predictor, table: pl.DataFrame) -> pl.Series:
    """Per row: the groupings whose level the sample never saw, joined by ``, ``; else null."""
    names: list[list[str]] = [[] for _ in range(table.height)]
    seen: set[str] = set()
    for d, block in enumerate(pred.design.blocks):
        name = block.grouping.name
        if name in seen:
            continue
        seen.add(name)
        level, extra = _level_index(table, pred.levels[d])
        if extra:
            for i in np.flatnonzero(level >= pred.levels[d].height):
                names[int(i)].append(name)
    return pl.Series("unseen", [", ".join(n) if n else None for n in names], dtype=pl.String)


def predict(
    pred: Predictor, config: PredictConfig, interval: float, table: pl.DataFrame
) -> pl.DataFrame:
    """The ``predictions`` table: the model's columns, estimate, std_error, lower, upper, unseen.

    ``table`` is the checked table (:func:`read_cells`); one row per row of
    it, in its order.
    """
    columns = table.columns
    post = PoststratifyConfig(config.path, _WEIGHT, (_ROW,), config.draws, config.seed)
    parts = []
    for start in range(0, table.height, ROW_CHUNK):
        chunk = table.slice(start, ROW_CHUNK)
        cells = chunk.with_columns(
            pl.lit(1.0).alias(_WEIGHT), pl.int_range(pl.len(), dtype=pl.Int64).alias(_ROW)
        )
        out = poststratify(pred, post, interval, cells).sort(_ROW)
        parts.append(out.select(NUMBERS))
    numbers = pl.concat(parts)
    names = published_names(columns)
    return pl.concat(
        [table.rename(names), numbers, _unseen(pred, table).to_frame()], how="horizontal"
    )
