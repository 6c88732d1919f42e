from __future__ import annotations

import pytest

from pooljob.errors import FormulaError, UnsupportedTermError
from pooljob.formula import parse_formula


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
        ("y ~ x + (1 | g)", "'x'"),
        ("y ~ 1 + (x | g)", "'(x | g)'"),
        ("y ~ 1 + (1 + x | g)", "'(1 + x | g)'"),
        ("y ~ 1 + (1 || g)", "'(1 || g)'"),
        ("y ~ 0 + (1 | g)", "0"),
        ("y ~ (1 | g) - 1", "- 1"),
        ("log(y) ~ 1 + (1 | g)", "'log(y)'"),
        ("y ~ factor(a) + (1 | g)", "'factor(a)'"),
    ],
)
def test_unsupported_terms_are_named(text: str, term: str) -> None:
    with pytest.raises(
        UnsupportedTermError,
        match=term.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|").replace("+", r"\+"),
    ):
        parse_formula(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("y ~ 1", "no random-effect term"),
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
