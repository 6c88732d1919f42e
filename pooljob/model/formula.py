"""Parse lme4 model formulas into a frozen description of the model.

Fixed part: ``1``, ``0`` / ``- 1``, numeric and categorical columns,
``factor(col)``, interactions ``a:b`` and ``a*b``, ``offset(col)``.  Random
part: ``(1 | g)``, slopes ``(1 + x | g)`` / ``(x | g)`` with correlation,
``(x || g)`` without, ``(0 + x | g)``; nested ``(1 | a/b/c)`` and
interactions ``(1 | a:b)`` as grouping factors; crossed and nested terms
together.  Column names that are not syntactic R names are written in
backticks, as in R: ``(1 | `zip code`)``.  Terms that lme4 accepts but
pooljob cannot fit raise :class:`~pooljob.errors.UnsupportedTermError`
naming the term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pooljob.errors import FormulaError, UnsupportedTermError
from pooljob.model.terms import (
    Formula,
    Grouping,
    RandomTerm,
    Term,
    Variable,
    display_name,
)

__all__ = [
    "Formula",
    "Grouping",
    "RandomTerm",
    "Term",
    "Variable",
    "display_name",
    "parse_formula",
]

_NAME = re.compile(r"[A-Za-z.][A-Za-z0-9._]*")
_TOKEN = re.compile(
    r"\s*(?:(?P<bq>`(?:[^`\\]|\\.)*`)|(?P<num>[0-9]+(?:\.[0-9]*)?)"
    r"|(?P<name>[A-Za-z.][A-Za-z0-9._]*)|(?P<op>\|\||[~+\-()|/:*^,]))"
)


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
                f"{_source(text, toks)!r} is not supported; use column names, "
                "nesting 'a/b' or interactions 'a:b'"
            )
        expect_name = not expect_name
    if expect_name or not cols:
        raise FormulaError(f"formula {text!r}: incomplete grouping factor in '({term})'")
    if len(set(cols)) != len(cols):
        raise FormulaError(f"formula {text!r}: a column repeats in '({term})'")
    return tuple(cols)


def _groupings(text: str, rhs: list[_Tok], term: str) -> list[Grouping]:
    """Expand ``a/b/c`` into the groupings ``a``, ``b:a``, ``c:(b:a)``."""
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


def _variable(text: str, toks: list[_Tok], where: str) -> Variable | str:
    """One factor of a term: ``x``, ``factor(x)``; ``offset(x)`` returns ``"offset"``."""
    values = [t.value for t in toks]
    if len(toks) == 1 and toks[0].kind == "name":
        return Variable(toks[0].value)
    if (
        len(toks) == 4
        and toks[0].kind == "name"
        and values[1] == "("
        and toks[2].kind == "name"
        and values[3] == ")"
    ):
        if values[0] == "factor":
            return Variable(toks[2].value, as_factor=True)
        if values[0] == "offset":
            return "offset"
    if (
        len(toks) == 7
        and values[:4] == ["offset", "(", "log", "("]
        and toks[4].kind == "name"
        and values[5:] == [")", ")"]
    ):
        return "log_offset"
    raise UnsupportedTermError(
        f"term '{_source(text, toks)}' in {where} is not supported: use column names, "
        "factor(col), interactions a:b and a*b, offset(col) or offset(log(col))"
    )


def _term_products(text: str, toks: list[_Tok], where: str) -> list[Term]:
    """Expand one additive term (``a``, ``a:b``, ``a*b``) into model terms."""
    chunks = [part for _, part in _split_top(toks, {"*"})]
    products: list[Term] = []
    for chunk in chunks:
        parts = [part for _, part in _split_top(chunk, {":"})]
        if any(not part for part in parts):
            raise FormulaError(f"formula {text!r}: incomplete term '{_source(text, toks)}'")
        factors: list[Variable] = []
        for part in parts:
            v = _variable(text, part, where)
            if isinstance(v, str):
                raise UnsupportedTermError(
                    f"term '{_source(text, toks)}': offset() must be a term of its own"
                )
            if v not in factors:
                factors.append(v)
        products.append(tuple(factors))
    terms: list[Term] = []
    for mask in range(1, 2 ** len(products)):
        merged: list[Variable] = []
        for i, prod in enumerate(products):
            if mask >> i & 1:
                merged.extend(v for v in prod if v not in merged)
        terms.append(tuple(merged))
    terms.sort(key=len)
    return terms


def _same_term(a: Term, b: Term) -> bool:
    return set(a) == set(b)


def _linear_part(
    text: str, toks: list[_Tok], where: str, allow_random: bool
) -> tuple[bool, list[Term], list[str], list[list[_Tok]], list[str]]:
    """Parse ``1 + a + b:c - d``: intercept, terms, offsets, random parts, log offsets."""
    intercept = True
    terms: list[Term] = []
    offsets: list[str] = []
    log_offsets: list[str] = []
    random: list[list[_Tok]] = []
    for sign, part in _split_top(toks, {"+", "-"}):
        if not part:
            raise FormulaError(f"formula {text!r}: empty term next to '{sign}' in {where}")
        values = [t.value for t in part]
        if values in (["1"], ["0"]):
            intercept = (values == ["1"]) == (sign == "+")
            continue
        if (
            part[0].value == "("
            and part[-1].value == ")"
            and _split_top(part[1:-1], {"|", "||"})[1:]
        ):
            if not allow_random:
                raise FormulaError(f"formula {text!r}: a random term inside {where}")
            if sign == "-":
                raise UnsupportedTermError(f"term '- {_source(text, part)}' cannot be removed")
            random.append(part[1:-1])
            continue
        if part[0].value == "(" and part[-1].value == ")":
            raise UnsupportedTermError(
                f"term '{_source(text, part)}' in {where} is not supported: write the "
                "terms out without parentheses"
            )
        v = (
            _variable(text, part, where)
            if len(part) in (1, 4) or (len(part) == 7 and part[0].value == "offset")
            else None
        )
        if v in ("offset", "log_offset"):
            if sign == "-":
                raise FormulaError(f"formula {text!r}: an offset cannot be subtracted")
            if v == "offset":
                offsets.append(part[2].value)
            else:
                log_offsets.append(part[4].value)
            continue
        expanded = _term_products(text, part, where)
        if sign == "-":
            terms = [t for t in terms if not any(_same_term(t, e) for e in expanded)]
            continue
        for e in expanded:
            if not any(_same_term(e, t) for t in terms):
                terms.append(e)
    return intercept, terms, offsets, random, log_offsets


def _random_term(text: str, toks: list[_Tok]) -> list[RandomTerm]:
    term = _source(text, toks)
    bars = [i for i, t in enumerate(toks) if t.kind == "op" and t.value in ("|", "||")]
    if len(bars) != 1:
        raise FormulaError(
            f"formula {text!r}: '({term})' needs exactly one '|' between the varying "
            "terms and the grouping factor, e.g. '(1 | state)'"
        )
    lhs, rhs = toks[: bars[0]], toks[bars[0] + 1 :]
    correlated = toks[bars[0]].value == "|"
    if not lhs:
        raise FormulaError(f"formula {text!r}: '({term})' has nothing before the '|'")
    intercept, terms, offsets, _, logs = _linear_part(text, lhs, f"'({term})'", allow_random=False)
    if offsets or logs:
        raise UnsupportedTermError(f"random-effect term '({term})': offset() is not allowed here")
    terms.sort(key=len)
    if not intercept and not terms:
        raise FormulaError(f"formula {text!r}: '({term})' has no varying term")
    result: list[RandomTerm] = []
    for grouping in _groupings(text, rhs, term):
        if correlated:
            result.append(RandomTerm(tuple(terms), intercept, grouping))
            continue
        if intercept:
            result.append(RandomTerm((), True, grouping, correlated=False))
        result.extend(RandomTerm((t,), False, grouping, correlated=False) for t in terms)
    return result


def _sort_terms(terms: list[Term]) -> tuple[Term, ...]:
    """R's order: by degree, then as written."""
    return tuple(sorted(terms, key=len))


def _name_random(random: list[RandomTerm]) -> tuple[RandomTerm, ...]:
    """Name terms as lme4 does: a grouping's further terms are ``g.1``, ``g.2`` …."""
    counts: dict[str, int] = {}
    named = []
    for rt in random:
        k = counts.get(rt.grouping.name, 0)
        counts[rt.grouping.name] = k + 1
        name = rt.grouping.name if k == 0 else f"{rt.grouping.name}.{k}"
        named.append(RandomTerm(rt.terms, rt.intercept, rt.grouping, rt.correlated, name))
    return tuple(named)


def _response(text: str, lhs: list[_Tok]) -> tuple[str, tuple[str, bool] | None]:
    """The left of ``~``: a column, ``cbind(s, f)`` or ``cbind(s, n - s)``."""
    if len(lhs) == 1 and lhs[0].kind == "name":
        return lhs[0].value, None
    values = [t.value for t in lhs]
    if len(lhs) >= 6 and values[:2] == ["cbind", "("] and values[-1] == ")":
        args = [part for _, part in _split_top(lhs[2:-1], {","})]
        if len(args) == 2 and len(args[0]) == 1 and args[0][0].kind == "name":
            s, second = args[0][0].value, args[1]
            if len(second) == 1 and second[0].kind == "name":
                return s, (second[0].value, False)
            if (
                [t.kind for t in second] == ["name", "op", "name"]
                and second[1].value == "-"
                and second[2].value == s
            ):
                return s, (second[0].value, True)
    raise UnsupportedTermError(
        f"response {_source(text, lhs)!r} is not supported: the left of '~' must be one "
        "numeric column, or for a binomial model cbind(successes, failures) or "
        "cbind(successes, trials - successes) (backticks for unusual names)"
    )


def parse_formula(text: str) -> Formula:
    """Parse an lme4 formula.

    Parameters
    ----------
    text : str
        For example ``"income ~ year * urban + (1 | state/county/zip)"``.

    Returns
    -------
    Formula

    Raises
    ------
    FormulaError
        When the text is not a formula.
    UnsupportedTermError
        When a term is valid lme4 but not supported; the message names it.
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
    response, cbind = _response(text, lhs)
    if not rhs:
        raise FormulaError(f"formula {text!r} has nothing on the right of '~'")
    intercept, terms, offsets, random_parts, log_offsets = _linear_part(
        text, rhs, "the fixed part", allow_random=True
    )
    random: list[RandomTerm] = []
    for part in random_parts:
        random.extend(_random_term(text, part))
    seen: dict[tuple[frozenset[str], frozenset[Variable], bool], str] = {}
    for rt in random:
        key = (
            frozenset(rt.grouping.columns),
            frozenset(v for t in rt.terms for v in t),
            rt.intercept,
        )
        if key in seen:
            raise FormulaError(
                f"formula {text!r}: grouping {rt.grouping.name!r} repeats {seen[key]!r}; "
                "each random term may appear once"
            )
        seen[key] = rt.grouping.name
    if not random and not intercept and not terms:
        raise FormulaError(f"formula {text!r} has no terms on the right of '~'")
    return Formula(
        text=text,
        response=response,
        intercept=intercept,
        random=_name_random(random),
        fixed=_sort_terms(terms),
        offsets=tuple(offsets),
        log_offsets=tuple(log_offsets),
        cbind=cbind,
    )
