"""A real S3 endpoint on 127.0.0.1 for tests: moto's threaded server, no internet.

Use it from a test module by importing the fixtures::

    from tests.s3 import S3, s3, s3_server  # noqa: F401

``s3_server`` (one per test module) starts ``moto.server.ThreadedMotoServer``
on a free port of 127.0.0.1 and stops it after the module; ``s3`` (one per
test) creates a fresh bucket and points the ``AWS_*`` environment variables
at the server with ``monkeypatch`` (``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), so pooljob
(and any pyarrow or delta-rs client built from the environment) talks to it.
Tests are skipped when moto is not installed (``pip install 'moto[server]'``).

Give every client credentials (any key pair will do): moto stores the body
of an unsigned upload from pyarrow as sent, in aws-chunked encoding, so an
anonymous client writes objects that no longer read as Parquet.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pfs
import pytest

_BUCKETS = itertools.count()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """A running moto server: its endpoint URL and a client that may create buckets."""

    endpoint: str
    fs: pfs.S3FileSystem

    @property
    def env(self) -> dict[str, str]:
        """The ``AWS_*`` variables for this server (also delta-rs's ``storage_options``)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }


@dataclass
class S3:
    """A fresh bucket on the test server, with the environment pointing at it."""

    server: S3Server
    bucket: str

    @property
    def fs(self) -> pfs.S3FileSystem:
        return self.server.fs

    def url(self, key: str = "") -> str:
        """``s3://<bucket>/<key>``."""
        return f"s3://{self.bucket}/{key}".rstrip("/")

    def put(self, key: str, local: Path | bytes) -> None:
        """Upload a local file (or bytes) as ``key``."""
        data = local if isinstance(local, bytes) else local.read_bytes()
        with self.fs.open_output_stream(f"{self.bucket}/{key}") as out:
            out.write(data)

    def get(self, key: str) -> bytes:
        with self.fs.open_input_stream(f"{self.bucket}/{key}") as stream:
            return bytes(stream.read())

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (sorted; folders left out)."""
        base = f"{self.bucket}/{prefix}".rstrip("/")
        infos = self.fs.get_file_info(pfs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path[len(self.bucket) + 1 :] for i in infos if i.type == pfs.FileType.File)

    def delete(self, key: str) -> None:
        self.fs.delete_file(f"{self.bucket}/{key}")


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1, for the whole test module."""
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server: Any = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    fs = pfs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        allow_bucket_creation=True,
        allow_bucket_deletion=True,
    )
    try:
        yield S3Server(f"http://127.0.0.1:{port}", fs)
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A new empty bucket, and ``AWS_*`` set for the server (undone after the test)."""
    bucket = f"bucket-{os.getpid()}-{next(_BUCKETS)}"
    s3_server.fs.create_dir(bucket)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return S3(s3_server, bucket)
