"""The statistics query in Spark SQL: ``sql/cell_stats.sql`` transpiled by sqlglot.

The query is written once, for DuckDB (:func:`pooljob.scan.cell_moments.cell_stats_sql`);
Spark runs the same definition, translated by ``sqlglot`` from the ``duckdb``
dialect to ``spark``.  sqlglot quotes identifiers with backticks (doubling
any backtick inside), turns the bound shifts ``$s0, $s1, …`` into Spark's
named parameters ``:s0, :s1, …`` (bound by ``spark.sql(..., args=...)``,
never pasted), and keeps ``avg``, ``var_pop``, ``covar_pop``, ``count`` and
``filter (where …)``, which mean the same in both engines.  Three DuckDB
functions have no Spark counterpart and are rewritten here:

``isfinite(x)``
    ``(not isnan(x) and abs(x) <= 1.7976931348623157e+308)``: false for NaN
    and ±infinity, null for null (a ``where`` drops the row, a ``filter``
    does not count it), as DuckDB's.
``fsum(x)``
    ``sum(x)``: DuckDB's ``fsum`` is a compensated sum, Spark's ``sum`` a
    plain one (per partition, then merged); over the rows of one cell the
    two differ by rounding only (the count query's sums of ``exp(o)`` and of
    the log-likelihood constants).
``lgamma(x)``
    Spark SQL has no ``lgamma`` (nor ``gamma``); :func:`lgamma_sql` writes
    ``log Γ(x)`` for ``x ≥ 1`` (every argument of the count query's
    constants, ``y + 1``, ``t + 1``, ``t − y + 1``, is) as Stirling's series
    at ``z = x + 8`` through the term in ``z⁻¹³``, less
    ``ln(x (x+1) … (x+7))``; from ``x ≥ 10⁶`` the series at ``x`` itself.  The
    series' remainder is below 2e-16 at ``z ≥ 9``, so the result is
    ``log Γ(x)`` to the rounding of a few double operations (within 4e-15
    of ``math.lgamma`` over ``1 ≤ x ≤ 10¹²``, absolute below 4, relative
    above; ``tests/test_spark.py``), as exact as a C library's ``lgamma``.

Spark's column types are also named here as DuckDB names them, so that the
schema checks of :mod:`pooljob.scan.schema` serve both engines.
"""

from __future__ import annotations

import math
import re
import sys

import sqlglot
from sqlglot import exp

#: DuckDB's name of each Spark scalar type (``DataType.simpleString()``).
_SPARK_TO_DUCKDB = {
    "tinyint": "TINYINT",
    "smallint": "SMALLINT",
    "int": "INTEGER",
    "bigint": "BIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
    "boolean": "BOOLEAN",
    "string": "VARCHAR",
    "binary": "BLOB",
    "date": "DATE",
    "timestamp": "TIMESTAMP WITH TIME ZONE",
    "timestamp_ntz": "TIMESTAMP",
    "void": "NULL",
}
_DECIMAL = re.compile(r"^decimal\((\d+),(\d+)\)$")


def _finite(x: exp.Expression) -> exp.Expression:
    """Spark's ``isfinite``: not NaN and no larger in magnitude than the largest double."""
    largest = exp.Literal.number(repr(sys.float_info.max))
    not_nan = exp.Not(this=exp.IsNan(this=x.copy()))
    bounded = exp.LTE(this=exp.Abs(this=x.copy()), expression=largest)
    return exp.Paren(this=exp.And(this=not_nan, expression=bounded))


#: Stirling's series for log Γ(z): the coefficients B_2k / (2k (2k − 1)), k = 1 … 7.
_STIRLING = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156)
#: From here on the series at x itself is exact to rounding (its first term is < 1e-7).
_LARGE = 1e6


def _double(value: float) -> str:
    """A double literal in Spark SQL (a literal with an exponent; ``0.5`` would be a decimal)."""
    return format(value, ".17e")


def _stirling(z: str) -> str:
    """Stirling's series for log Γ(z) in SQL, ``z`` a parenthesised expression (z ≥ 9)."""
    series = _double(_STIRLING[-1])
    for c in reversed(_STIRLING[:-1]):  # Horner in 1/z²
        series = f"({_double(c)} + {series} / ({z} * {z}))"
    half_log_2pi = _double(0.5 * math.log(2 * math.pi))
    return f"(({z} - {_double(0.5)}) * ln({z}) - {z} + {half_log_2pi} + {series} / {z})"


def lgamma_sql(x: str) -> str:
    """``log Γ(x)`` for ``x ≥ 1`` in Spark SQL, ``x`` an SQL expression (module docstring)."""
    a = f"cast({x} as double)"
    shifted = f"({a} + {_double(8.0)})"
    product = " * ".join([a, *(f"({a} + {_double(j)})" for j in range(1, 8))])
    return (
        f"(case when {a} >= {_double(_LARGE)} then {_stirling(a)} "
        f"else {_stirling(shifted)} - ln({product}) end)"
    )


def _rewrite(node: exp.Expression) -> exp.Expression:
    """Replace DuckDB functions that Spark lacks by their Spark definitions."""
    if not isinstance(node, exp.Anonymous):
        return node
    name = node.name.lower()
    if name == "isfinite":
        (arg,) = node.expressions
        return _finite(arg)
    if name == "fsum":
        (arg,) = node.expressions
        return exp.Sum(this=arg.copy().transform(_rewrite))
    if name == "lgamma":
        (arg,) = node.expressions
        text = lgamma_sql(arg.sql(dialect="spark"))
        tree = sqlglot.parse_one(text, read="spark")
        assert isinstance(tree, exp.Expression)
        return tree
    return node


def spark_sql(sql: str, pretty: bool = False) -> str:
    """Transpile one DuckDB statement of pooljob's to Spark SQL.

    Parameters
    ----------
    sql : str
        DuckDB SQL, e.g. the output of :func:`pooljob.scan.cell_moments.cell_stats_sql`,
        with ``$name`` parameters.
    pretty : bool
        Indent the output (for ``pooljob explain``).

    Returns
    -------
    str
        Spark SQL with ``:name`` parameters, without the DuckDB file's
        comments (they describe its ``$name`` parameters).
    """
    tree = sqlglot.parse_one(sql, read="duckdb")
    tree = tree.transform(_rewrite)
    return tree.sql(dialect="spark", pretty=pretty, comments=False)


def duckdb_type(spark_type: str) -> str:
    """DuckDB's name for a Spark type (``DataType.simpleString()``).

    Scalars map one to one (``int`` → ``INTEGER``, ``decimal(10,2)`` →
    ``DECIMAL(10,2)``); nested types keep a DuckDB-like prefix (``INTEGER[]``,
    ``STRUCT(...)``, ``MAP(...)``) so that the checks refuse them as keys.
    """
    name = spark_type.strip().lower()
    if name in _SPARK_TO_DUCKDB:
        return _SPARK_TO_DUCKDB[name]
    decimal = _DECIMAL.match(name)
    if decimal:
        return f"DECIMAL({decimal.group(1)},{decimal.group(2)})"
    if name.startswith(("varchar", "char")):
        return "VARCHAR"
    if name.startswith("array<"):
        return f"{duckdb_type(name[len('array<') : -1])}[]"
    if name.startswith("struct<"):
        return f"STRUCT({spark_type[len('struct<') : -1]})"
    if name.startswith("map<"):
        return f"MAP({spark_type[len('map<') : -1]})"
    return spark_type.upper()
