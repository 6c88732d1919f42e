"""The statistics store of an S3 output, kept under ``<prefix>/state/``.

The store lives beside the runs it serves, so any machine that runs the job
refreshes incrementally.  It is read and written through a local copy
(:mod:`pooljob.scan.store` on a folder of the output's work directory):
:func:`fetch_store` downloads ``state/store.json`` and the two tables it
names; :func:`push_store` uploads the tables a save wrote, then
``store.json`` (one PUT: the commit, atomic as the local rename is), then
deletes the tables no record names.  A store that cannot be fetched is
"no store": the run scans every object and rebuilds it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pooljob.errors import PublishError
from pooljob.scan import s3
from pooljob.scan.store import RECORD, STATE

__all__ = ["fetch_store", "push_store"]


def fetch_store(url: str, work: Path) -> str:
    """Copy the store of the S3 output ``url`` into ``work/state/``; "" or why it could not."""
    folder = work / STATE
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fs = s3.filesystem()
        record = s3.get_bytes(f"{url}/{STATE}/{RECORD}", fs)
        if record is None:
            return ""
        names = [t["file"] for t in json.loads(record)["tables"].values()]
        for name in names:
            if "/" in name or not s3.get_file(f"{url}/{STATE}/{name}", folder / name, fs):
                return f"its table {name!r} is missing"
        (folder / RECORD).write_bytes(record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"the store under {url!r} could not be read ({str(exc).splitlines()[0]})"
    return ""


def push_store(url: str, work: Path) -> None:
    """Upload the store saved in ``work/state/`` to ``url``; ``store.json`` last."""
    folder = work / STATE
    fs = s3.filesystem(PublishError)
    record = (folder / RECORD).read_bytes()
    names = {t["file"] for t in json.loads(record)["tables"].values()}
    for name in sorted(names):
        s3.put_file(folder / name, f"{url}/{STATE}/{name}", fs)
    s3.put_bytes(f"{url}/{STATE}/{RECORD}", record, fs)
    for name in s3.list_names(f"{url}/{STATE}", fs):
        if name.endswith(".parquet") and name not in names:
            s3.delete_object(f"{url}/{STATE}/{name}", fs)
