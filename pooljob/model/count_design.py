"""The design of a binomial or Poisson model laid out on the cells of a count table.

Every column of ``X`` and of each ``Z`` term is, within a cell, an indicator of
the cell's categorical levels times a numeric variable that is constant in the
cell (:mod:`pooljob.model.design`); the count model (:mod:`pooljob.model.glmm`)
takes them as dense per-cell columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pooljob.errors import InputError
from pooljob.model.cells import CountTable
from pooljob.model.design import Design, build_design, check_rank, grouping_codes, indicator
from pooljob.model.formula import Formula
from pooljob.model.glmm import CountModel, count_model
from pooljob.model.lmm import MAX_DENSE

Array = NDArray[np.float64]


@dataclass(frozen=True)
class PreparedCounts:
    """The design laid out on the cells of a count table."""

    design: Design
    counts: CountTable
    model: CountModel
    codes: list[NDArray[np.int64]]  # design order
    design_formula: Formula


def _columns(counts: CountTable, columns: tuple[Any, ...]) -> Array:
    c = len(counts.n)
    if not columns:
        return np.zeros((c, 0))
    out = []
    for col in columns:
        v = indicator(counts.keys, c, col.spec)
        if col.variable:
            v = v * counts.values[:, col.variable - 1]
        out.append(v)
    return np.column_stack(out)


def prepare_counts(
    formula: Formula, family: str, counts: CountTable, numeric: set[str], categorical: list[str]
) -> PreparedCounts:
    """Lay out the design on the cells; check rank, groups and size."""
    levels = {c: sorted(counts.keys[c].drop_nulls().unique().to_list()) for c in categorical}
    design = build_design(formula, numeric, levels)
    x = _columns(counts, design.fixed)
    names = [c.name for c in design.fixed]
    if names:
        check_rank(x.T @ (counts.t[:, None] * x), names)
    codes = grouping_codes(counts.keys, design)
    random = [
        (code, int(code.max()) + 1, _columns(counts, block.columns), block.free_entries())
        for block, code in zip(design.blocks, codes, strict=True)
    ]
    model = count_model(family, counts.y, counts.t, counts.offset, counts.constant, x, random)
    dense = sum(q * w for q, w in zip(model.levels[1:], model.widths[1:], strict=True))
    if dense > MAX_DENSE:
        raise InputError(
            f"crossed groupings too large for the exact dense solver: all but the largest "
            f"grouping form a dense {dense:,} × {dense:,} block (limit {MAX_DENSE:,}); see "
            "docs/crossed-at-scale.md"
        )
    return PreparedCounts(design, counts, model, codes, formula)
