from __future__ import annotations

import re

import pytest

from pooljob.errors import FormulaError
from pooljob.model.formula import parse_formula


@pytest.mark.parametrize(
    ("text", "names", "keys"),
    [
        ("y ~ 1 + (1 | g)", ["g"], ("g",)),
        ("y ~ (1 | g)", ["g"], ("g",)),
        ("Yield~1+(1|Batch)", ["Batch"], ("Batch",)),
        ("strength ~ 1 + (1 | batch/cask)", ["batch", "cask:batch"], ("batch", "cask")),
        (
            "income ~ 1 + (1 | state/county/zip)",
            ["state", "county:state", "zip:(county:state)"],
            ("state", "county", "zip"),
        ),
        ("y ~ 1 + (1 | a:b)", ["a:b"], ("a", "b")),
        ("y ~ 1 + (1 | a) + (1 | a:b)", ["a", "a:b"], ("a", "b")),
        ("y ~ 1 + (1 | `zip code`)", ["`zip code`"], ("zip code",)),
        ("`net income` ~ 1 + (1 | `select`/`in`)", ["select", "`in`:select"], ("select", "in")),
    ],
)
def test_supported(text: str, names: list[str], keys: tuple[str, ...]) -> None:
    f = parse_formula(text)
    assert [g.name for g in f.groupings] == names
    assert f.key_columns == keys
    assert f.intercept


def test_backticked_response_and_columns() -> None:
    f = parse_formula(r"`net income` ~ 1 + (1 | `zip code`/`x\`y`)")
    assert f.response == "net income"
    assert f.groupings[1].columns == ("x`y", "zip code")
    assert f.groupings[1].name == r"`x\`y`:`zip code`"


def test_nested_level_labels_follow_lme4_order() -> None:
    f = parse_formula("y ~ 1 + (1 | state/county/zip)")
    assert f.groupings[2].columns == ("zip", "county", "state")


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("y ~ log(x) + (1 | g)", "'log(x)'"),
        ("y ~ 1 + (log(x) | g)", "'log(x)'"),
        ("log(y) ~ 1 + (1 | g)", "'log(y)'"),
        ("y ~ (a + b):c + (1 | g)", "'(a + b)'"),
        ("y ~ x:offset(o) + (1 | g)", "offset"),
        ("y ~ 1 + (1 | g$h)", "cannot read"),
    ],
)
def test_unsupported_terms_are_named(text: str, term: str) -> None:
    with pytest.raises(FormulaError, match=re.escape(term)):
        parse_formula(text)


def test_fixed_terms_interactions_and_offsets() -> None:
    f = parse_formula("y ~ year * urban + factor(period) + offset(o) + (1 + x | g) + (x || h)")
    assert [[v.label for v in t] for t in f.fixed] == [
        ["year"],
        ["urban"],
        ["factor(period)"],
        ["year", "urban"],
    ]
    assert f.offsets == ("o",)
    assert [(rt.name, rt.intercept, rt.correlated) for rt in f.random] == [
        ("g", True, True),
        ("h", True, False),
        ("h.1", False, False),
    ]
    assert not f.nested_intercepts


def test_no_intercept_and_removed_terms() -> None:
    assert not parse_formula("y ~ state - 1").intercept
    assert not parse_formula("y ~ 0 + state + (1 | g)").intercept
    f = parse_formula("y ~ a*b - a:b + (1 | g)")
    assert [[v.column for v in t] for t in f.fixed] == [["a"], ["b"]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("y ~ 0", "no terms"),
        ("~ (1 | g)", "one response"),
        ("y ~ (1 | g", r"unmatched '\('"),
        ("y ~ (1 | g))", r"unmatched '\)'"),
        ("y ~ (1 | )", "no grouping factor"),
        ("y ~ (1 | a) + (1 | a)", "repeats"),
        ("y ~ (1 | a$b)", "cannot read"),
        ("y ~ (1 | a/a)", "repeats"),
    ],
)
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(FormulaError, match=message):
        parse_formula(text)
