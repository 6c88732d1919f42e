"""From a formula and the source schema to the model's columns, as cell functions.

Every column of ``X`` and of each ``Z`` term is, within a cell (one
combination of the key columns), an indicator of the cell's categorical
levels times a numeric variable (or 1).  So a column is described by its
*indicator spec* — ``((column, level), …)`` — and the index of its numeric
variable; its cross-products with any other column are sums over cells of
the cells' moments (:mod:`pooljob.scan.cell_moments`).

Categorical variables use R's treatment contrasts, the first level in
sorted order as reference, and R's rule for interactions: a categorical
variable in a term is coded by contrasts when the term without it is in the
model (the intercept counting as the empty term), by indicators otherwise.
Column names are lme4's: ``(Intercept)``, ``Days``, ``urbanY``,
``factor(period)2``, ``year:urbanY``.  A boolean column is categorical with
the levels ``False < True``, named as R names a logical's (``urbanTRUE``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import polars as pl
from numpy.typing import NDArray

from pooljob.errors import InputError
from pooljob.model.cells import NumericVariable
from pooljob.model.formula import Formula, Grouping, Term, Variable

Spec = tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class Column:
    """One model column: ``indicator(spec) × variable``.

    Attributes
    ----------
    name : str
        lme4's name of the column.
    spec : tuple of (column, level)
        The cell's categorical levels this column is nonzero for (all of them).
    variable : int
        Index into the moments' variables: 0 is the constant 1, ``i ≥ 1`` is
        ``Design.variables[i - 1]``.
    """

    name: str
    spec: Spec
    variable: int


@dataclass(frozen=True)
class RandomBlock:
    """The random-effect columns of one grouping factor (terms amalgamated).

    Attributes
    ----------
    grouping : Grouping
    columns : tuple of Column
    term_of : tuple of int
        For each column, the index of its term among ``term_names``.
    term_names : tuple of str
        lme4's names of the terms (``Subject``, ``Subject.1`` for ``||``).
    correlated : tuple of bool
        Per term: whether its columns are correlated.
    """

    grouping: Grouping
    columns: tuple[Column, ...]
    term_of: tuple[int, ...]
    term_names: tuple[str, ...]
    correlated: tuple[bool, ...]

    def free_entries(self) -> list[tuple[int, int]]:
        """Lower-triangle positions of the relative covariance factor that θ sets.

        Column-major within each term (lme4's order); zero between terms.
        """
        entries: list[tuple[int, int]] = []
        for t in range(len(self.term_names)):
            cols = [i for i, k in enumerate(self.term_of) if k == t]
            for jj, j in enumerate(cols):
                rows = cols[jj:] if self.correlated[t] else [j]
                entries.extend((i, j) for i in rows)
        return entries


@dataclass(frozen=True)
class Design:
    """The model's columns and what the scan must compute.

    Attributes
    ----------
    keys : tuple of str
        Key columns of the cells: grouping and categorical columns.
    variables : tuple of NumericVariable
        Numeric variables; the response first, then covariates and products,
        then offsets.
    response : NDArray
        Coefficients of the fitted response in the variables
        (``y − offsets``), length ``len(variables)``.
    offsets : tuple of int
        Variable indices (1-based, as in ``Column.variable``) of the offsets.
    fixed : tuple of Column
    blocks : tuple of RandomBlock
    categorical : dict
        Categorical column to its sorted levels.
    """

    keys: tuple[str, ...]
    variables: tuple[NumericVariable, ...]
    response: NDArray[np.float64]
    offsets: tuple[int, ...]
    fixed: tuple[Column, ...]
    blocks: tuple[RandomBlock, ...]
    categorical: dict[str, list[object]]


def _level_label(value: object) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_categorical(v: Variable, numeric_columns: set[str]) -> bool:
    return v.as_factor or v.column not in numeric_columns


def _term_columns(
    term: Term,
    model_terms: list[frozenset[Variable]],
    categorical: dict[str, list[object]],
    numeric_columns: set[str],
    variable_index: dict[tuple[str, ...], int],
) -> list[Column]:
    """R's columns for one term, the first variable varying fastest."""
    present = set(model_terms)
    numeric = tuple(v.column for v in term if not _is_categorical(v, numeric_columns))
    var = variable_index[numeric] if numeric else 0
    pieces: list[list[tuple[str, Spec]]] = []
    for v in term:
        if not _is_categorical(v, numeric_columns):
            pieces.append([(v.label, ())])
            continue
        levels = categorical[v.column]
        contrast = frozenset(u for u in term if u != v) in present
        use = levels[1:] if contrast else levels
        pieces.append([(v.label + _level_label(lv), ((v.column, lv),)) for lv in use])
    columns = []
    for combo in itertools.product(*reversed(pieces)):
        parts = list(reversed(combo))
        name = ":".join(p[0] for p in parts)
        spec = tuple(s for p in parts for s in p[1])
        columns.append(Column(name, spec, var))
    return columns


def _linear_columns(
    intercept: bool,
    terms: tuple[Term, ...],
    categorical: dict[str, list[object]],
    numeric_columns: set[str],
    variable_index: dict[tuple[str, ...], int],
) -> list[Column]:
    model_terms = [frozenset(t) for t in terms]
    if intercept:
        model_terms.append(frozenset())
    cols = [Column("(Intercept)", (), 0)] if intercept else []
    for term in terms:
        cols.extend(_term_columns(term, model_terms, categorical, numeric_columns, variable_index))
    return cols


def _closed(columns: list[Column], var: int) -> bool:
    """Whether every column using ``var`` has its constant counterpart in ``columns``."""
    specs = {c.spec for c in columns if c.variable == 0}
    return all(c.spec in specs for c in columns if c.variable == var)


def has_constant(columns: tuple[Column, ...] | list[Column]) -> bool:
    """Whether the columns span the constant: an intercept, or all levels of a factor."""
    if any(c.variable == 0 and not c.spec for c in columns):
        return True
    by_col: dict[str, set[object]] = {}
    for c in columns:
        if c.variable == 0 and len(c.spec) == 1:
            by_col.setdefault(c.spec[0][0], set()).add(c.spec[0][1])
    return bool(by_col)


def build_design(
    formula: Formula, numeric_columns: set[str], categorical: dict[str, list[object]]
) -> Design:
    """Lay out the model's variables and columns.

    Parameters
    ----------
    formula : Formula
    numeric_columns : set of str
        Source columns of numeric type (others are categorical).
    categorical : dict
        Levels of each categorical column, sorted (from the data).
    """
    products: dict[tuple[str, ...], None] = {}
    all_terms = list(formula.fixed) + [t for rt in formula.random for t in rt.terms]
    for term in all_terms:
        numeric = tuple(v.column for v in term if not _is_categorical(v, numeric_columns))
        if numeric:
            products.setdefault(numeric, None)
    variables = [NumericVariable((formula.response,))]
    variable_index: dict[tuple[str, ...], int] = {}
    for prod in products:
        variables.append(NumericVariable(prod))
        variable_index[prod] = len(variables)
    offsets = []
    for column in formula.offsets:
        variables.append(NumericVariable((column,)))
        offsets.append(len(variables))
    response = np.zeros(len(variables))
    response[0] = 1.0
    for index in offsets:
        response[index - 1] = -1.0
    fixed = _linear_columns(
        formula.intercept, formula.fixed, categorical, numeric_columns, variable_index
    )
    by_grouping: dict[Grouping, list[int]] = {}
    for i, rt in enumerate(formula.random):
        by_grouping.setdefault(rt.grouping, []).append(i)
    blocks = []
    for grouping, idx in by_grouping.items():
        cols: list[Column] = []
        term_of: list[int] = []
        for t, i in enumerate(idx):
            rt = formula.random[i]
            new = _linear_columns(
                rt.intercept, rt.terms, categorical, numeric_columns, variable_index
            )
            cols.extend(new)
            term_of.extend([t] * len(new))
        names = tuple(formula.random[i].name for i in idx)
        correlated = tuple(formula.random[i].correlated for i in idx)
        blocks.append(RandomBlock(grouping, tuple(cols), tuple(term_of), names, correlated))
    # a variable may be centred when every block that uses it stays closed
    centrable = []
    y_ok = has_constant(fixed)
    for k in range(1, len(variables) + 1):
        if k == 1 or k in offsets:
            centrable.append(y_ok)
            continue
        ok = _closed(fixed, k)
        for b in blocks:
            if any(c.variable == k for c in b.columns):
                ok = (
                    ok
                    and all(b.correlated)
                    and len(b.term_names) == 1
                    and _closed(list(b.columns), k)
                )
        centrable.append(ok)
    variables = [NumericVariable(v.columns, c) for v, c in zip(variables, centrable, strict=True)]
    keys: dict[str, None] = {}
    for g in formula.groupings:
        for c in g.columns:
            keys.setdefault(c, None)
    for c in categorical:
        keys.setdefault(c, None)
    return Design(
        keys=tuple(keys),
        variables=tuple(variables),
        response=response,
        offsets=tuple(offsets),
        fixed=tuple(fixed),
        blocks=tuple(blocks),
        categorical=categorical,
    )


def categorical_columns(formula: Formula, numeric_columns: set[str]) -> list[str]:
    """The categorical variables of the formula, each once."""
    seen: dict[str, None] = {}
    for v in formula.variables:
        if _is_categorical(v, numeric_columns):
            seen.setdefault(v.column, None)
    return list(seen)


def indicator(keys: pl.DataFrame, n_cells: int, spec: Spec) -> NDArray[np.float64]:
    """Per cell: 1.0 where the cell has every (column, level) of ``spec``.

    ``n_cells`` is given, not read from ``keys``: a model with no key column
    has one cell and a key frame with no columns.
    """
    out = np.ones(n_cells)
    for col, level in spec:
        out *= (keys[col] == level).to_numpy().astype(np.float64)
    return out


def dense_codes(keys: pl.DataFrame, columns: tuple[str, ...]) -> NDArray[np.int64]:
    """Per cell: the code of its group of ``columns`` (0.., in sorted key order)."""
    if keys.height == 0:
        return np.zeros(0, dtype=np.int64)
    series = keys.select(pl.struct(list(columns)).rank("dense").alias("c"))["c"]
    return series.to_numpy().astype(np.int64) - 1


def check_rank(xtx: NDArray[np.float64], names: list[str]) -> None:
    """Raise when the fixed-effect columns are linearly dependent, naming them.

    Columns are taken in order; one whose residual sum of squares, after
    regression on the columns kept before it, is below 1e-10 of its own sum of
    squares is a combination of them.
    """
    kept: list[int] = []
    for j in range(len(names)):
        sjj = xtx[j, j]
        if sjj <= 0.0:
            raise InputError(
                f"fixed-effect column {names[j]!r} is zero for every row used; "
                "drop the term or check the data"
            )
        if kept:
            a = xtx[np.ix_(kept, kept)]
            b = xtx[kept, j]
            coef = np.linalg.lstsq(a, b, rcond=None)[0]
            resid = sjj - float(b @ coef)
        else:
            resid = sjj
        if resid <= 1e-10 * sjj:
            others = ", ".join(repr(names[k]) for k in kept)
            raise InputError(
                f"the fixed-effect design is rank deficient: column {names[j]!r} is a linear "
                f"combination of {others or 'nothing'}; drop a term (e.g. remove "
                f"{names[j]!r}) or check for a categorical level that only occurs with another"
            )
        kept.append(j)


def grouping_codes(keys: pl.DataFrame, design: Design) -> list[NDArray[np.int64]]:
    """Each cell's level, ``0 … q−1``, in each grouping of the design (design order).

    Raises
    ------
    InputError
        When a grouping has a single group: no variance between groups.
    """
    out = []
    for block in design.blocks:
        code = dense_codes(keys, block.grouping.columns)
        if (int(code.max()) + 1 if len(code) else 0) < 2:
            raise InputError(
                f"grouping {block.grouping.name!r} has a single group; a variance between "
                "groups needs at least two: check the where filter, or drop the term"
            )
        out.append(code)
    return out
