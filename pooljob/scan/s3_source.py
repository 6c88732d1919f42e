"""Parquet objects on S3 as an Arrow dataset that DuckDB scans: no httpfs extension.

The objects a ``[source] path`` matches (:func:`pooljob.scan.s3.list_objects`)
become one pyarrow dataset, one fragment per object, registered on the
DuckDB connection; DuckDB pushes the columns a query reads and its filters
(the ``where`` filter, partition values) into the dataset's scanner, so an
object's unused column chunks are never downloaded.

As DuckDB's ``read_parquet(…, hive_partitioning = true, union_by_name =
true)``: every ``key=value`` folder in an object's key is a column (typed
BIGINT when every value is an integer of at most 18 digits, DATE when every
value is a ``YYYY-MM-DD`` date, TIMESTAMP when every value is a
``YYYY-MM-DD HH:MM:SS[.ffffff]`` time, VARCHAR otherwise; ordered by name,
after the files' columns), and the columns are the union of the objects' columns by name
(a column an object lacks is null; types are promoted as
``pyarrow.unify_schemas`` does).  A partition value, and the object's own URL
for the column of :func:`s3_relation`'s ``file_column``, is the fragment's
partition expression: constant per object, filled in by the scanner.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from typing import Any
from urllib.parse import unquote

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from pooljob.errors import InputError
from pooljob.scan.s3 import SCHEME, filesystem, s3_error

__all__ = ["s3_dataset", "s3_relation"]

_INT = re.compile(r"[+-]?\d{1,18}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?")
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def _partitions(urls: list[str]) -> list[dict[str, str]]:
    """The ``key=value`` folders of each object's key (values as written: %-encoded)."""
    found = []
    for url in urls:
        folders = url[len(SCHEME) :].split("/")[1:-1]  # without the bucket and the name
        found.append({k: v for k, _, v in (f.partition("=") for f in folders if "=" in f) if k})
    return found


def _partition_type(values: list[str]) -> pa.DataType:
    present = [v for v in values if v != _HIVE_NULL]
    if present and all(_INT.fullmatch(v) for v in present):
        return pa.int64()
    if present and all(_DATE.fullmatch(v) for v in present):
        return pa.date32()
    if present and all(_TIMESTAMP.fullmatch(v) for v in present):
        return pa.timestamp("us")
    return pa.string()


def _value(text: str, kind: pa.DataType) -> Any:
    """A partition value: typed from the text as written, a VARCHAR %-decoded (as DuckDB)."""
    if text == _HIVE_NULL:
        return None
    if pa.types.is_int64(kind):
        return int(text)
    if pa.types.is_date32(kind):
        return date.fromisoformat(text)
    if pa.types.is_timestamp(kind):
        return datetime.fromisoformat(text)
    return unquote(text)


def s3_dataset(objects: list[tuple[str, int]], file_column: str | None = None) -> ds.Dataset:
    """A pyarrow dataset over the Parquet ``objects`` (``(url, size)``), as the module says.

    ``file_column`` names a column that holds each row's object URL (as given).
    """
    fs = filesystem()
    fmt = ds.ParquetFileFormat()
    urls = [u for u, _ in objects]
    parts = _partitions(urls)
    keys = sorted({k for p in parts for k in p})
    try:
        bare = [
            fmt.make_fragment(u[len(SCHEME) :], filesystem=fs, file_size=size)
            for u, size in objects
        ]
        with ThreadPoolExecutor(min(8, max(1, len(bare)))) as pool:
            schemas = list(pool.map(lambda f: f.physical_schema, bare))
        unified = pa.unify_schemas(schemas, promote_options="permissive")
    except (OSError, pa.ArrowException) as exc:
        raise s3_error(exc, f"reading the Parquet footers of {len(objects)} objects") from None
    keys = [k for k in keys if k not in unified.names]  # a column of the files wins
    types = {k: _partition_type([p.get(k, _HIVE_NULL) for p in parts]) for k in keys}
    schema = unified
    for k in keys:
        schema = schema.append(pa.field(k, types[k]))
    if file_column is not None:
        schema = schema.append(pa.field(file_column, pa.string()))
    fragments = []
    for (url, size), part in zip(objects, parts, strict=True):
        expr = ds.scalar(True)
        for k in keys:
            value = _value(part.get(k, _HIVE_NULL), types[k])
            field = ds.field(k)
            expr = expr & (
                field.is_null() if value is None else field == pa.scalar(value, types[k])
            )
        if file_column is not None:
            expr = expr & (ds.field(file_column) == url)
        fragments.append(
            fmt.make_fragment(
                url[len(SCHEME) :], filesystem=fs, file_size=size, partition_expression=expr
            )
        )
    return ds.FileSystemDataset(fragments, schema, fmt, fs)


def s3_relation(
    con: duckdb.DuckDBPyConnection,
    objects: list[tuple[str, int]],
    name: str,
    file_column: str | None = None,
) -> duckdb.DuckDBPyRelation:
    """Register the dataset of ``objects`` on ``con`` as ``name``; its relation."""
    if not objects:
        raise InputError("no object to read")
    con.register(name, s3_dataset(objects, file_column))
    return con.sql(f'select * from "{name}"')
