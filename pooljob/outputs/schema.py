"""The version of the output schema, and the Parquet files that carry it.

``SCHEMA_VERSION`` names the output contract (docs/outputs.md): the columns
and types of every table and the fields of ``manifest.json``.  A run writes
it into the manifest (``schema_version``) and into the key-value metadata of
every Parquet file it publishes (``pooljob.schema_version``, with
``pooljob.run_id`` and ``pooljob.table``).  A change a reader could notice
bumps it and is recorded in CHANGELOG.md: the major number when a reader of
the old schema could break (a column removed, renamed or retyped), the minor
one for additions; the golden schemas of ``tests/data/schemas/`` make sure
no change slips in unannounced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pooljob.errors import InputError

#: The version of the output contract this code writes.
SCHEMA_VERSION = "1.3"
#: Key-value metadata of every published Parquet file.
VERSION_KEY = "pooljob.schema_version"
RUN_ID_KEY = "pooljob.run_id"
TABLE_KEY = "pooljob.table"
#: zstd at level 3 with column statistics: what polars' ``write_parquet`` writes.
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3


def table_metadata(run_id: str, table: str) -> dict[str, str]:
    """The ``pooljob.*`` key-value metadata of one published table."""
    return {VERSION_KEY: SCHEMA_VERSION, RUN_ID_KEY: run_id, TABLE_KEY: table}


def write_table(frame: pl.DataFrame, path: Path, run_id: str, table: str) -> None:
    """Write ``frame`` as Parquet with the schema version, run id and table name.

    Through pyarrow (polars writes no custom metadata): the Arrow schema's
    metadata, merged with any it has, is stored in the file's key-value
    metadata; zstd and column statistics as polars writes them.
    """
    import pyarrow.parquet as pq

    arrow = frame.to_arrow()
    existing = {
        k.decode("utf-8"): v.decode("utf-8") for k, v in (arrow.schema.metadata or {}).items()
    }
    arrow = arrow.replace_schema_metadata({**existing, **table_metadata(run_id, table)})
    pq.write_table(
        arrow,
        str(path),
        compression=COMPRESSION,
        compression_level=COMPRESSION_LEVEL,
        write_statistics=True,
    )


def major(version: str) -> int:
    """The major number of a schema version (``"1"``, ``"1.2"`` → 1); ValueError if none."""
    return int(str(version).split(".", 1)[0])


def check_readable(manifest: dict[str, Any], where: str) -> None:
    """Raise a one-line InputError if this code cannot read a run of ``manifest``'s schema.

    A run without ``schema_version`` (published before it existed) and any
    version up to this code's major one are read; a newer major version is
    refused.
    """
    version = manifest.get("schema_version")
    if version is None:
        return
    try:
        found = major(version)
    except ValueError:
        raise InputError(
            f"{where}: schema_version {version!r} is not a version pooljob knows "
            f"(this pooljob reads up to {SCHEMA_VERSION})"
        ) from None
    if found > major(SCHEMA_VERSION):
        raise InputError(
            f"{where}: the run has output schema version {version}, newer than this "
            f"pooljob reads (up to {SCHEMA_VERSION}); upgrade pooljob to read it"
        )
