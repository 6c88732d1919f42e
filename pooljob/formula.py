"""Parse lme4 model formulas into a frozen description of the model.

Supported now: ``y ~ 1 + (1 | g)``, nested ``(1 | a/b/c)``, interactions as
grouping factors ``(1 | a:b)``, and sums of such terms.  Column names that are
not syntactic R names are written in backticks, as in R: ``(1 | `zip code`)``.
Terms that lme4 accepts but pooljob cannot fit yet raise
:class:`~pooljob.errors.UnsupportedTermError` naming the term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pooljob.errors import FormulaError, UnsupportedTermError

_NAME = re.compile(r"[A-Za-z.][A-Za-z0-9._]*")
_R_SYNTACTIC = re.compile(r"^(?:[A-Za-z]|\.(?![0-9]))[A-Za-z0-9._]*$")
_TOKEN = re.compile(
    r"\s*(?:(?P<bq>`(?:[^`\\]|\\.)*`)|(?P<num>[0-9]+(?:\.[0-9]*)?)"
    r"|(?P<name>[A-Za-z.][A-Za-z0-9._]*)|(?P<op>\|\||[~+\-()|/:*^,]))"
)


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
class Formula:
    """A parsed model formula.

    Attributes
    ----------
    text : str
        The formula as written.
    response : str
        The response column.
    intercept : bool
        Whether the fixed part has an intercept (always true for now).
    groupings : tuple of Grouping
        The random-intercept terms, in the order written (nested terms
        expanded outermost first, as ``a/b`` means ``a + b:a``).
    """

    text: str
    response: str
    intercept: bool
    groupings: tuple[Grouping, ...]

    @property
    def key_columns(self) -> tuple[str, ...]:
        """All grouping columns, each once, in order of first appearance."""
        seen: dict[str, None] = {}
        for g in self.groupings:
            for c in g.columns:
                seen.setdefault(c, None)
        return tuple(seen)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every source column the model reads: the response, then the keys."""
        return (self.response, *self.key_columns)


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


@dataclass(frozen=True)
class _Tok:
    kind: str
    value: str
    start: int
    end: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FormulaError(
                f"formula {text!r}: cannot read {text[pos:].strip()[:20]!r}; "
                "write it in lme4 syntax, e.g. 'y ~ 1 + (1 | state/county)', "
                "with unusual column names in backticks"
            )
        kind = m.lastgroup or "op"
        value = m.group(kind)
        start = m.start(kind)
        if kind == "bq":
            kind, value = "name", re.sub(r"\\(.)", r"\1", value[1:-1])
            if not value:
                raise FormulaError(f"formula {text!r}: empty backtick name ``")
        toks.append(_Tok(kind, value, start, m.end()))
        pos = m.end()
    return toks


def _split_top(toks: list[_Tok], seps: set[str]) -> list[tuple[str, list[_Tok]]]:
    """Split a token list at depth-0 separators; each part keeps its leading sign."""
    parts: list[tuple[str, list[_Tok]]] = []
    depth, sign = 0, "+"
    cur: list[_Tok] = []
    for t in toks:
        if t.value == "(" and t.kind == "op":
            depth += 1
        elif t.value == ")" and t.kind == "op":
            depth -= 1
        if depth == 0 and t.kind == "op" and t.value in seps:
            if cur or parts:
                parts.append((sign, cur))
            sign, cur = t.value, []
            continue
        cur.append(t)
    parts.append((sign, cur))
    return parts


def _source(text: str, toks: list[_Tok]) -> str:
    if not toks:
        return ""
    return text[toks[0].start : toks[-1].end].strip()


def _check_balanced(text: str, toks: list[_Tok]) -> None:
    depth = 0
    for t in toks:
        if t.kind == "op" and t.value == "(":
            depth += 1
        elif t.kind == "op" and t.value == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"formula {text!r}: unmatched ')'")
    if depth:
        raise FormulaError(f"formula {text!r}: unmatched '('")


def _factor_columns(text: str, toks: list[_Tok], term: str) -> tuple[str, ...]:
    """Columns of one grouping factor ``a`` or ``a:b:c`` (left to right)."""
    cols: list[str] = []
    expect_name = True
    for t in toks:
        if expect_name and t.kind == "name":
            cols.append(t.value)
        elif not expect_name and t.kind == "op" and t.value == ":":
            pass
        else:
            raise UnsupportedTermError(
                f"random-effect term '({term})': grouping factor "
                f"{_source(text, toks)!r} is not supported yet; use column names, "
                "nesting 'a/b' or interactions 'a:b'"
            )
        expect_name = not expect_name
    if expect_name or not cols:
        raise FormulaError(f"formula {text!r}: incomplete grouping factor in '({term})'")
    if len(set(cols)) != len(cols):
        raise FormulaError(f"formula {text!r}: a column repeats in '({term})'")
    return tuple(cols)


def _random_term(text: str, toks: list[_Tok]) -> list[Grouping]:
    term = _source(text, toks)
    bars = [i for i, t in enumerate(toks) if t.kind == "op" and t.value in ("|", "||")]
    if len(bars) != 1:
        raise FormulaError(
            f"formula {text!r}: '({term})' needs exactly one '|' between the varying "
            "terms and the grouping factor, e.g. '(1 | state)'"
        )
    lhs, rhs = toks[: bars[0]], toks[bars[0] + 1 :]
    if toks[bars[0]].value == "||" or [t.value for t in lhs] != ["1"]:
        raise UnsupportedTermError(
            f"random-effect term '({term})' is not supported yet: only random "
            "intercepts '(1 | g)' can be fitted; random slopes come later"
        )
    if not rhs:
        raise FormulaError(f"formula {text!r}: '({term})' has no grouping factor after '|'")
    factors = [part for _, part in _split_top(rhs, {"/"})]
    if any(not f for f in factors):
        raise FormulaError(f"formula {text!r}: empty nesting level in '({term})'")
    groupings: list[Grouping] = []
    prev_name, prev_cols = "", tuple[str, ...]()
    for part in factors:
        cols = _factor_columns(text, part, term)
        name = ":".join(display_name(c) for c in cols)
        if prev_name:
            name = name + ":" + (f"({prev_name})" if ":" in prev_name else prev_name)
            cols = cols + prev_cols
        if len(set(cols)) != len(cols):
            raise FormulaError(f"formula {text!r}: a column repeats in '({term})'")
        groupings.append(Grouping(name, cols))
        prev_name, prev_cols = name, cols
    return groupings


def parse_formula(text: str) -> Formula:
    """Parse an lme4 formula.

    Parameters
    ----------
    text : str
        For example ``"income ~ 1 + (1 | state/county/zip)"``.

    Returns
    -------
    Formula

    Raises
    ------
    FormulaError
        When the text is not a formula.
    UnsupportedTermError
        When a term is valid lme4 but not yet supported; the message names it.
    """
    if not isinstance(text, str) or not text.strip():
        raise FormulaError(f"formula {text!r} is empty; write e.g. 'y ~ 1 + (1 | group)'")
    toks = _tokenize(text)
    _check_balanced(text, toks)
    tildes = [i for i, t in enumerate(toks) if t.kind == "op" and t.value == "~"]
    if len(tildes) != 1 or tildes[0] == 0:
        raise FormulaError(
            f"formula {text!r} needs one response on the left of '~', e.g. 'y ~ 1 + (1 | g)'"
        )
    lhs, rhs = toks[: tildes[0]], toks[tildes[0] + 1 :]
    if len(lhs) != 1 or lhs[0].kind != "name":
        raise UnsupportedTermError(
            f"response {_source(text, lhs)!r} is not supported yet: the left of '~' "
            "must be one numeric column (backticks for unusual names)"
        )
    if not rhs:
        raise FormulaError(f"formula {text!r} has nothing on the right of '~'")
    intercept = True
    groupings: list[Grouping] = []
    for sign, part in _split_top(rhs, {"+", "-"}):
        term = _source(text, part)
        if not part:
            raise FormulaError(f"formula {text!r}: empty term next to '{sign}'")
        if [t.value for t in part] == ["1"] and sign == "+":
            continue
        if [t.value for t in part] in (["0"], ["1"]):
            raise UnsupportedTermError(
                f"term '{sign} {term}' (no intercept) is not supported yet: "
                "the model needs its intercept, e.g. 'y ~ 1 + (1 | g)'"
            )
        if (
            sign == "+"
            and part[0].value == "("
            and part[-1].value == ")"
            and _split_top(part[1:-1], {"|", "||"})[1:]
        ):
            groupings.extend(_random_term(text, part[1:-1]))
            continue
        raise UnsupportedTermError(
            f"fixed-effect term '{term}' is not supported yet: the fixed part can "
            "only be the intercept '1' for now; put group structure in '(1 | g)' terms"
        )
    if not groupings:
        raise FormulaError(
            f"formula {text!r} has no random-effect term; pooljob fits multilevel "
            "models: add a grouping such as '(1 | state)'"
        )
    seen: dict[frozenset[str], str] = {}
    for g in groupings:
        key = frozenset(g.columns)
        if key in seen:
            raise FormulaError(
                f"formula {text!r}: grouping {g.name!r} repeats {seen[key]!r}; "
                "each grouping may appear once"
            )
        seen[key] = g.name
    return Formula(
        text=text, response=lhs[0].value, intercept=intercept, groupings=tuple(groupings)
    )
