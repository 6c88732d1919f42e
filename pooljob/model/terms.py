"""The model a formula describes: its groupings, variables and terms (frozen).

:mod:`pooljob.model.formula` parses lme4's syntax into these; everything
downstream (the scan, the design, the outputs) reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_R_SYNTACTIC = re.compile(r"^(?:[A-Za-z]|\.(?![0-9]))[A-Za-z0-9._]*$")


@dataclass(frozen=True)
class Grouping:
    """One random-intercept term ``(1 | name)``.

    Attributes
    ----------
    name : str
        lme4's name of the grouping factor, e.g. ``state``, ``county:state``,
        ``zip:(county:state)``.
    columns : tuple of str
        The source columns whose combination defines a group, in the order
        lme4 pastes them into level labels (``c12:MD`` for ``county:state``).
    """

    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Variable:
    """One variable of a model term: a column, numeric or categorical.

    Attributes
    ----------
    column : str
    as_factor : bool
        Written ``factor(col)``: categorical whatever the column's type.
    """

    column: str
    as_factor: bool = False

    @property
    def label(self) -> str:
        """The variable as R prints it in a coefficient name."""
        name = display_name(self.column)
        return f"factor({name})" if self.as_factor else name


#: A model term: the product of its variables; ``()`` is the intercept.
Term = tuple[Variable, ...]


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects term ``(lhs | grouping)`` after expansion.

    Attributes
    ----------
    terms : tuple of Term
        The model terms of the left-hand side, without the intercept.
    intercept : bool
        Whether the left-hand side has an intercept (``(x | g)`` does).
    grouping : Grouping
    correlated : bool
        False for the terms ``(x || g)`` expands to (one term per column).
    name : str
        The name lme4 gives it in ``VarCorr``: the grouping's name, with
        ``.1``, ``.2`` … for further terms on the same grouping.
    """

    terms: tuple[Term, ...]
    intercept: bool
    grouping: Grouping
    correlated: bool = True
    name: str = ""

    @property
    def intercept_only(self) -> bool:
        """``(1 | g)``."""
        return self.intercept and not self.terms


@dataclass(frozen=True)
class Formula:
    """A parsed model formula.

    Attributes
    ----------
    text : str
        The formula as written.
    response : str
        The response column.
    intercept : bool
        Whether the fixed part has an intercept.
    fixed : tuple of Term
        Fixed-effect terms other than the intercept, in R's order (by degree).
    offsets : tuple of str
        Columns added to the linear predictor with coefficient 1.
    random : tuple of RandomTerm
        Random-effect terms, nested ones expanded (``a/b`` is ``a + b:a``).
    log_offsets : tuple of str
        Columns whose logarithm is an offset: ``offset(log(exposure))``.
    cbind : (str, bool) or None
        A binomial response ``cbind(s, f)``: ``response`` is the successes
        column ``s`` and this is ``(f, False)``; for ``cbind(s, n - s)`` it is
        ``(n, True)``, the column of trials.
    """

    text: str
    response: str
    intercept: bool
    random: tuple[RandomTerm, ...]
    fixed: tuple[Term, ...] = ()
    offsets: tuple[str, ...] = ()
    log_offsets: tuple[str, ...] = ()
    cbind: tuple[str, bool] | None = None

    @property
    def groupings(self) -> tuple[Grouping, ...]:
        """The distinct grouping factors, in order of appearance."""
        seen: dict[Grouping, None] = {}
        for rt in self.random:
            seen.setdefault(rt.grouping, None)
        return tuple(seen)

    @property
    def nested_intercepts(self) -> bool:
        """``y ~ 1 + (1 | a) + (1 | b) …``: the fast tree solver may apply."""
        return (
            self.intercept
            and not self.fixed
            and not self.offsets
            and not self.log_offsets
            and self.cbind is None
            and bool(self.random)
            and all(rt.intercept_only for rt in self.random)
        )

    @property
    def key_columns(self) -> tuple[str, ...]:
        """All grouping columns, each once, in order of first appearance."""
        seen: dict[str, None] = {}
        for g in self.groupings:
            for c in g.columns:
                seen.setdefault(c, None)
        return tuple(seen)

    @property
    def variables(self) -> tuple[Variable, ...]:
        """Every variable of the fixed and random terms, each once."""
        seen: dict[Variable, None] = {}
        for term in self.fixed:
            for v in term:
                seen.setdefault(v, None)
        for rt in self.random:
            for term in rt.terms:
                for v in term:
                    seen.setdefault(v, None)
        return tuple(seen)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every source column the model reads: the response first."""
        seen: dict[str, None] = {self.response: None}
        if self.cbind is not None:
            seen.setdefault(self.cbind[0], None)
        for v in self.variables:
            seen.setdefault(v.column, None)
        for c in (*self.offsets, *self.log_offsets, *self.key_columns):
            seen.setdefault(c, None)
        return tuple(seen)


_R_RESERVED = frozenset(
    [
        "if",
        "else",
        "repeat",
        "while",
        "function",
        "for",
        "in",
        "next",
        "break",
        "TRUE",
        "FALSE",
        "NULL",
        "Inf",
        "NaN",
        "NA",
        "NA_integer_",
        "NA_real_",
        "NA_character_",
        "NA_complex_",
    ]
)


def display_name(column: str) -> str:
    """Return ``column`` as R prints it in a formula (backticks when needed)."""
    if _R_SYNTACTIC.match(column) and column not in _R_RESERVED:
        return column
    return "`" + column.replace("\\", "\\\\").replace("`", "\\`") + "`"
