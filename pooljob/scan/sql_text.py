"""SQL text from a job: quoted identifiers, numbers written in, trusted SQL checked.

Column and table names are quoted as identifiers (DuckDB doubles a ``"``
inside the quotes); numbers pooljob computed can be written into a query as
exact DOUBLE literals (for ``pooljob explain``); and the trusted SQL of a
config (``[source] where`` and ``query``) is checked with DuckDB's own parser
to be one expression or one SELECT before any connection is opened.
"""

from __future__ import annotations

import re

import duckdb


def quote_identifier(name: str) -> str:
    """Quote a column or table name for DuckDB: ``"`` doubled inside quotes."""
    return '"' + name.replace('"', '""') + '"'


# A quoted identifier, a string literal, a comment, or a parameter ``$name``.
_TOKENS = re.compile(
    r"""("(?:[^"]|"")*"|'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/)|\$([A-Za-z_]\w*)""", re.S
)


def double_literal(value: float) -> str:
    """A DOUBLE as SQL text that DuckDB reads back bit for bit: ``cast('0.1' as double)``.

    ``repr`` is the shortest text that round-trips (``nan`` and ``inf`` too),
    and DuckDB's string-to-double cast is correctly rounded; a bare ``0.1``
    would be a DECIMAL first.
    """
    return f"cast('{float(value)!r}' as double)"


def inline_parameters(sql: str, params: dict[str, float]) -> str:
    """``sql`` with each parameter ``$name`` of ``params`` written in as a DOUBLE literal.

    Quoted identifiers, string literals and comments are left as they are;
    a parameter not in ``params`` too.  The values are numbers pooljob
    computed, never user text.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(2)
        if name is None or name not in params:
            return match.group(0)
        return double_literal(params[name])

    return _TOKENS.sub(replace, sql)


def filter_sql(where: str) -> str:
    """The query of the view ``source``: ``source_raw`` filtered by ``where``.

    ``where`` stands on lines of its own, so that a ``--`` comment in it
    cannot swallow the closing parenthesis.
    """
    return f"select * from source_raw where (\n{where}\n)"


def where_problem(where: str) -> str | None:
    """Why ``[source] where`` is not one SQL expression, by DuckDB's parser; None if it is.

    Nothing is run: the text is parsed alone as an expression, then as the
    filter of the view ``source``, which must be one SELECT statement.  So
    ``1=1); copy (select 42) to 'x.csv'; select (1`` is refused before any
    connection is opened.
    """
    what = f"[source] where = {where!r} must be one SQL expression, such as year = 2024"
    try:
        parse_expression = getattr(duckdb, "SQLExpression", None)  # duckdb >= 1.2
        if parse_expression is not None:
            parse_expression(where)
        statements = duckdb.extract_statements(filter_sql(where))
    except duckdb.Error as exc:
        return f"{what} (DuckDB's parser: {first_line(exc)})"
    kinds = [st.type.name for st in statements]
    if kinds != ["SELECT"]:
        return f"{what}; it makes the statements {', '.join(kinds)} (no ';' in a filter)"
    return None


def query_problem(query: str) -> str | None:
    """Why ``[source] query`` is not one SELECT statement, by DuckDB's parser; None if it is.

    ``WITH … SELECT``, ``FROM t``, ``VALUES``, ``SUMMARIZE`` and
    ``DESCRIBE`` are SELECT statements to DuckDB; COPY, ATTACH, INSTALL,
    LOAD, PRAGMA, SET, CALL, CREATE, INSERT and the like are refused, and so
    is a second statement after a ``;``.
    """
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        return f"[source] query is not valid SQL (DuckDB's parser: {first_line(exc)})"
    kinds = [st.type.name for st in statements]
    if kinds != ["SELECT"]:
        what = "[source] query must be one SELECT statement (or WITH … SELECT)"
        if len(kinds) == 1:
            return f"{what}; got a {kinds[0]} statement"
        return (
            f"{what}; got {len(kinds)} statements ({', '.join(kinds) or 'none'}): keep only "
            "the SELECT (a ';' ends a statement)"
        )
    return None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (DuckDB's can run to many)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
