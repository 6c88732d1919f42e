"""Publish a run to object storage: ``runs/<run_id>/`` objects, then the ``current.json`` pointer.

Layout under ``[output] path = "s3://bucket/prefix"``::

    current.json                the published run: {"run_id", "path", "files", …}
    runs/<run_id>/…             a run's objects, immutable once written;
                                manifest.json is written last of them
    state/                      the statistics store (:mod:`pooljob.scan.s3_store`)

S3 has no rename and no symlink, so the swap of ``current`` is a pointer
object: a run is written to a local staging folder (as a local run is),
its objects are uploaded under ``runs/<run_id>/`` (tables first,
``manifest.json`` last), and only then is ``current.json`` overwritten by a
single PUT.  S3 makes a PUT atomic (a reader gets the old object or the new
one, whole), so a reader that reads ``current.json`` and then the objects it
names sees one complete run, never a mix.  A run that fails before the PUT
deletes what it uploaded and leaves ``current.json`` as it was; a run that
is killed leaves an incomplete ``runs/<run_id>/`` (no ``manifest.json``) that
the next publish deletes.  After the pointer moves, the oldest complete
runs beyond ``keep_runs`` are deleted (never the current one).  S3 errors
become one-line :class:`~pooljob.errors.PublishError` messages (exit code 5).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.fs as pfs

from pooljob.errors import PublishError
from pooljob.scan import s3

__all__ = ["POINTER", "publish_s3", "work_dir"]

POINTER = "current.json"
RUNS = "runs"
MANIFEST = "manifest.json"

log = logging.getLogger("pooljob")


def work_dir(url: str, root: Path) -> Path:
    """The local folder of an S3 output under ``root``: its lock and staging area.

    Named by a hash of the endpoint (``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL``, empty for AWS) and the URL: one folder per output.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    name = f"{endpoint.strip().rstrip('/')} {url}"
    return root / hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]


def publish_s3(
    url: str, work: Path, run_id: str, write: Callable[[Path], None], keep_runs: int
) -> str:
    """Write a run with ``write(directory)``, upload it under ``url``, point ``current.json`` at it.

    Parameters
    ----------
    url : str
        ``[output] path``, ``s3://bucket/prefix`` (no trailing ``/``).
    work : Path
        A local folder of this output (the caller holds its lock).
    run_id : str
    write : callable
        Writes every file of the run into the directory it is given.
    keep_runs : int
        How many complete runs to keep (the current one always stays).

    Returns
    -------
    str
        The URL of the published run, ``<url>/runs/<run_id>``.
    """
    fs = s3.filesystem(PublishError)
    staging = work / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    local = staging / run_id
    run_url = f"{url}/{RUNS}/{run_id}"
    uploaded: list[str] = []
    try:
        local.mkdir(parents=True)
        write(local)
        names = sorted(p.name for p in local.iterdir() if p.is_file())
        names = [n for n in names if n != MANIFEST] + [n for n in names if n == MANIFEST]
        for name in names:
            uploaded.append(f"{run_url}/{name}")
            s3.put_file(local / name, uploaded[-1], fs)
        pointer = {
            "run_id": run_id,
            "path": f"{RUNS}/{run_id}",
            "files": names,
            "published_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        s3.put_bytes(f"{url}/{POINTER}", (json.dumps(pointer, indent=2) + "\n").encode(), fs)
    except BaseException as exc:
        for url_ in uploaded:
            with contextlib.suppress(OSError):
                s3.delete_object(url_, fs)
        if isinstance(exc, OSError):
            raise s3.s3_error(exc, f"publishing run {run_id} to {url!r}", PublishError) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    prune_s3(url, keep_runs, run_id, fs)
    return run_url


def prune_s3(url: str, keep_runs: int, keep: str, fs: pfs.S3FileSystem) -> None:
    """Delete incomplete runs older than ``keep`` and the oldest complete runs beyond ``keep_runs``.

    A failure is a warning: the run is published.
    """
    try:
        runs = [n for n in s3.list_names(f"{url}/{RUNS}", fs) if n != keep]
        complete = []
        for name in runs:
            if s3.exists(f"{url}/{RUNS}/{name}/{MANIFEST}", fs):
                complete.append(name)
            elif name < keep:  # a run killed before its manifest was written
                s3.delete_tree(f"{url}/{RUNS}/{name}", fs, log.warning)
    except OSError as exc:
        log.warning("published %s, but listing old runs of %r failed: %s", keep, url, exc)
        return
    excess = len(complete) + 1 - keep_runs
    for name in sorted(complete)[: max(excess, 0)]:
        s3.delete_tree(f"{url}/{RUNS}/{name}", fs, log.warning)
