"""The statistics query in Spark SQL: ``sql/cell_stats.sql`` transpiled by sqlglot.

The query is written once, for DuckDB (:func:`pooljob.scan.cell_moments.cell_stats_sql`);
Spark runs the same definition, translated by ``sqlglot`` from the ``duckdb``
dialect to ``spark``.  sqlglot quotes identifiers with backticks (doubling
any backtick inside), turns the bound shifts ``$s0, $s1, …`` into Spark's
named parameters ``:s0, :s1, …`` (bound by ``spark.sql(..., args=...)``,
never pasted), and keeps ``avg``, ``var_pop``, ``covar_pop``, ``count`` and
``filter (where …)``, which mean the same in both engines.  One DuckDB
function has no Spark counterpart and is rewritten here:

``isfinite(x)``
    ``(not isnan(x) and abs(x) <= 1.7976931348623157e+308)``: false for NaN
    and ±infinity, null for null (a ``where`` drops the row, a ``filter``
    does not count it), as DuckDB's.

Spark's column types are also named here as DuckDB names them, so that the
schema checks of :mod:`pooljob.scan.schema` serve both engines.
"""

from __future__ import annotations

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


def _rewrite(node: exp.Expression) -> exp.Expression:
    """Replace DuckDB functions that Spark lacks by their Spark definitions."""
    if isinstance(node, exp.Anonymous) and node.name.lower() == "isfinite":
        (arg,) = node.expressions
        return _finite(arg)
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
