"""Fingerprints of a job's input: what was read, and whether it changed while it was read.

A path source is fingerprinted by the files it matches (DuckDB's own glob
expansion), each as ``(path, size, mtime_ns)``; a database source by the
database file (and its write-ahead log, when there is one) and the table
name; a query source by the query text, since pooljob cannot know what a
query reads.  A remote path (``s3://…``) is fingerprinted by its text.

:func:`snapshot` before the scan and again after it tell whether a source
file was written, added or removed meanwhile (:func:`check_unchanged`); the
manifest records :func:`fingerprint` so that two runs on the same input can
be recognised.  A file rewritten with the same size within the file
system's timestamp resolution is not noticed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb

from pooljob.errors import SourceChangedError
from pooljob.scan.s3 import is_s3, source_objects
from pooljob.scan.s3 import stamps as s3_stamps

if TYPE_CHECKING:
    from pooljob.job.config import SourceConfig

#: ``(path, size in bytes, modification time in ns)`` of one file.
FileStamp = tuple[str, int, int]


@dataclass(frozen=True)
class InputSnapshot:
    """The input as it stands: its kind, its files' stamps, or the text that identifies it.

    Attributes
    ----------
    kind : {"files", "database", "query", "remote"}
    files : tuple of FileStamp
        Sorted by path; files that do not exist are left out.
    text : str
        What identifies the input beyond its files: the table name, the
        query, or the remote path (empty for local files).
    """

    kind: str
    files: tuple[FileStamp, ...]
    text: str = ""


def _pattern(path: str) -> str:
    """The glob DuckDB reads for a ``[source] path`` (a folder means its Parquet files)."""
    if not glob.has_magic(path) and os.path.isdir(path):
        return os.path.join(path, "**", "*.parquet")
    return path


def source_files(path: str) -> list[str]:
    """The files a ``[source] path`` matches, as DuckDB expands the glob.

    Local patterns are expanded by Python's recursive glob (the same rules for
    ``*``, ``?`` and ``**``) without opening a DuckDB connection, which costs
    ~20 ms and is paid twice a run; remote ones by DuckDB's ``glob``.
    """
    if is_s3(path):
        return [url for url, _ in source_objects(path)]
    pattern = _pattern(path)
    if "://" not in pattern:
        if not glob.has_magic(pattern):
            return [pattern] if os.path.isfile(pattern) else []
        return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    with duckdb.connect(":memory:") as con:
        rows = con.execute("select file from glob(?)", [pattern]).fetchall()
    return [str(r[0]) for r in rows]


def stamp(paths: list[str]) -> tuple[FileStamp, ...]:
    """``(path, size, mtime_ns)`` of each existing file, sorted by path (objects: a version)."""
    if paths and is_s3(paths[0]):
        return s3_stamps(paths)
    stamps = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        stamps.append((p, st.st_size, st.st_mtime_ns))
    return tuple(sorted(stamps))


def snapshot(source: SourceConfig) -> InputSnapshot:
    """Stamp the input of a ``[source]`` section now."""
    if source.path is not None:
        if "://" in source.path and not is_s3(source.path):
            return InputSnapshot("remote", (), source.path)
        return InputSnapshot("files", stamp(source_files(source.path)))
    if source.database is not None:
        files = [source.database, source.database + ".wal"]
        return InputSnapshot("database", stamp(files), source.table or "")
    return InputSnapshot("query", (), source.query or "")


def fingerprint(snap: InputSnapshot) -> dict[str, Any]:
    """The manifest's ``input_fingerprint``: a sha256 over the sorted stamps and text.

    Returns
    -------
    dict
        ``kind``, ``sha256`` (hex digest of the JSON list of
        ``[path, size, mtime_ns]`` followed by the identifying text),
        ``files`` and ``bytes``.
    """
    payload = json.dumps([[list(s) for s in snap.files], snap.text], separators=(",", ":"))
    return {
        "kind": snap.kind,
        "sha256": hashlib.sha256(payload.encode("utf-8")).hexdigest(),
        "files": len(snap.files),
        "bytes": sum(s[1] for s in snap.files),
    }


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


def check_unchanged(before: InputSnapshot, after: InputSnapshot) -> None:
    """Raise SourceChangedError naming the first file written, added or removed in between."""
    if before == after:
        return
    old = {p: (size, mtime) for p, size, mtime in before.files}
    new = {p: (size, mtime) for p, size, mtime in after.files}
    for path in sorted(old.keys() | new.keys()):
        if path not in new:
            what = "was removed"
        elif path not in old:
            what = "appeared"
        elif old[path] != new[path]:
            (s0, m0), (s1, m1) = old[path], new[path]
            if is_s3(path):
                what = f"was overwritten (size {s0} -> {s1} bytes, ETag changed)"
            else:
                what = (
                    f"was modified (size {s0} -> {s1} bytes, modified {_when(m0)} -> {_when(m1)})"
                )
        else:
            continue
        raise SourceChangedError(
            f"source file {path!r} {what} while the job read it, so the statistics may mix "
            "two versions; nothing was published: run again once the writer has finished"
        )
