"""Object storage (``s3://bucket/key``) through pyarrow's built-in S3 filesystem.

No extension is downloaded at run time: pyarrow's S3 client ships inside its
wheel.  Credentials, region and endpoint come from the standard environment
variables, never from the TOML:

``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (both or neither; neither:
the AWS SDK's default chain — profile, instance role), ``AWS_SESSION_TOKEN``,
``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (an S3-compatible endpoint such as MinIO), and
``AWS_ALLOW_HTTP=true`` to allow an ``http://`` endpoint.

Globs are matched by listing the pattern's fixed prefix and matching each
key: ``*`` and ``?`` match within one path segment, ``**`` any number of
segments, ``[abc]`` one character of a set (as DuckDB's glob).  An object is
stamped ``(url, size, version)``, ``version`` a 63-bit number from a SHA-256
of its ETag (which changes whenever the object is written, even with the
same size).  Errors become one line, raised as the error class the caller
names (an input or a publish error).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pfs

from pooljob.errors import InputError, PooljobError

__all__ = [
    "SCHEME",
    "Settings",
    "delete_object",
    "delete_tree",
    "exists",
    "filesystem",
    "get_bytes",
    "get_file",
    "glob_regex",
    "has_magic",
    "is_s3",
    "list_names",
    "list_objects",
    "put_bytes",
    "put_file",
    "require_bucket",
    "s3_error",
    "settings",
    "source_objects",
    "stamps",
    "storage_options",
]

SCHEME = "s3://"
_MAGIC = re.compile(r"[*?\[]")
_WORKERS = 8  # concurrent HEAD requests when stamping objects


def is_s3(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an ``s3://`` URL."""
    return isinstance(path, str) and path.startswith(SCHEME)


def has_magic(text: str) -> bool:
    """Whether ``text`` holds a glob character (``*``, ``?``, ``[``)."""
    return _MAGIC.search(text) is not None


def _key(url: str) -> str:
    """``bucket/key`` of ``s3://bucket/key`` (pyarrow's path), without a trailing ``/``."""
    return url[len(SCHEME) :].rstrip("/")


def _url(key: str) -> str:
    return SCHEME + key


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def s3_error(exc: BaseException, what: str, error: type[PooljobError] = InputError) -> PooljobError:
    """A one-line error of class ``error``: ``what`` failed, and the S3 client's first line."""
    text = str(exc).strip().splitlines()
    detail = text[0] if text else type(exc).__name__
    return error(f"{what} failed: {detail}")


@dataclass(frozen=True)
class Settings:
    """The S3 settings of the ``AWS_*`` environment (module docstring), checked.

    ``key`` and ``secret`` are both set or both None (None: the AWS SDK's
    default chain); ``scheme`` and ``host`` are those of the endpoint
    (None: AWS).
    """

    key: str | None
    secret: str | None
    token: str | None
    region: str | None
    scheme: str | None
    host: str | None


def settings(error: type[PooljobError] = InputError) -> Settings:
    """Read and check the ``AWS_*`` environment variables: the one place that parses them.

    Raises ``error`` (one line) when the variables are inconsistent: one of
    the key id and the secret without the other, an endpoint that is not a
    ``http(s)://host[:port]`` URL, or plain HTTP without ``AWS_ALLOW_HTTP``.
    """
    env = os.environ
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        have, lack = (
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            if key
            else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        )
        raise error(f"S3 credentials: {have} is set but {lack} is not; set both or neither")
    scheme = host = None
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        found = re.fullmatch(r"(https?)://([^/?#\s]+)/?", endpoint.strip())
        if found is None:
            raise error(
                f"AWS_ENDPOINT_URL = {endpoint!r} is not an endpoint URL; "
                "give http(s)://host[:port], e.g. http://127.0.0.1:9000"
            )
        scheme, host = found.groups()
        if scheme == "http" and not _truthy(env.get("AWS_ALLOW_HTTP")):
            raise error(
                f"AWS_ENDPOINT_URL = {endpoint!r} is plain HTTP; set AWS_ALLOW_HTTP=true to "
                "allow an unencrypted endpoint"
            )
    return Settings(
        key=key or None,
        secret=secret if key else None,
        token=(env.get("AWS_SESSION_TOKEN") or None) if key else None,
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        scheme=scheme,
        host=host,
    )


def filesystem(error: type[PooljobError] = InputError) -> pfs.S3FileSystem:
    """An S3 filesystem configured from the ``AWS_*`` environment variables (:func:`settings`)."""
    found = settings(error)
    options: dict[str, object] = {
        "retry_strategy": pfs.AwsStandardS3RetryStrategy(max_attempts=3),
        "connect_timeout": 10.0,
        "request_timeout": 60.0,
    }
    if found.key:
        options["access_key"] = found.key
        options["secret_key"] = found.secret
        if found.token:
            options["session_token"] = found.token
    if found.region:
        options["region"] = found.region
    if found.host:
        options["endpoint_override"] = found.host
        options["scheme"] = found.scheme
    try:
        return pfs.S3FileSystem(**options)
    except (OSError, ValueError, TypeError) as exc:
        raise s3_error(exc, "opening the S3 filesystem", error) from None


def storage_options(error: type[PooljobError] = InputError) -> dict[str, str]:
    """The same settings as delta-rs (and polars) ``storage_options`` (object_store's keys).

    ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``
    (with a key pair; without one, none: delta-rs then takes the AWS SDK's
    default chain, as pyarrow does), ``aws_region``, ``aws_endpoint`` and
    ``aws_allow_http`` (an endpoint), and the 10 s connect and 60 s request
    timeouts of :func:`filesystem`.
    """
    found = settings(error)
    options = {"connect_timeout": "10s", "timeout": "60s"}
    if found.key and found.secret:
        options["aws_access_key_id"] = found.key
        options["aws_secret_access_key"] = found.secret
        if found.token:
            options["aws_session_token"] = found.token
    if found.region:
        options["aws_region"] = found.region
    if found.host:
        options["aws_endpoint"] = f"{found.scheme}://{found.host}"
        options["aws_allow_http"] = "true" if found.scheme == "http" else "false"
    return options


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regular expression matching the keys a glob ``pattern`` names (module docstring)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) > 0:
            body = pattern[i + 1 : end]
            negate = body[:1] == "!"
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _bucket_problem(fs: pfs.S3FileSystem, key: str) -> str:
    """Why nothing was found under ``key``: the bucket is missing, or nothing matches."""
    bucket = key.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError:
        return ""
    if info.type == pfs.FileType.NotFound:
        return f"bucket {bucket!r} does not exist (or these credentials cannot see it)"
    return ""


def list_objects(url: str, suffixes: tuple[str, ...] = (".parquet",)) -> list[tuple[str, int]]:
    """The objects ``url`` names, as ``(url, size)`` sorted by url.

    ``url`` is one object, a glob, or a prefix ("folder"), which means every
    object under it whose name ends in one of ``suffixes``.  InputError
    when nothing matches (naming a missing bucket) or S3 cannot be read.
    """
    fs = filesystem()
    key = _key(url)
    try:
        if has_magic(key):
            cut = _MAGIC.search(key)
            assert cut is not None
            base = key[: cut.start()].rsplit("/", 1)[0]
            regex = glob_regex(key)
        else:
            info = fs.get_file_info(key)
            if info.type == pfs.FileType.File:
                return [(_url(key), int(info.size or 0))]
            base = key
            regex = re.compile(
                re.escape(key) + "/.*(?:" + "|".join(map(re.escape, suffixes)) + r")\Z"
            )
        selector = pfs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = fs.get_file_info(selector)
    except OSError as exc:
        raise s3_error(exc, f"listing {url!r}") from None
    found = sorted(
        (_url(i.path), int(i.size or 0))
        for i in infos
        if i.type == pfs.FileType.File and regex.match(i.path)
    )
    if not found:
        problem = _bucket_problem(fs, key)
        raise InputError(
            f"source path {url!r} matches no object"
            + (f": {problem}" if problem else f" (listed {_url(base)!r})")
        )
    return found


def require_bucket(url: str, error: type[PooljobError] = InputError) -> None:
    """Raise ``error`` (one line) unless the bucket of ``url`` exists and can be reached."""
    fs = filesystem(error)
    bucket = _key(url).split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise s3_error(exc, f"reaching the bucket of {url!r}", error) from None
    if info.type == pfs.FileType.NotFound:
        raise error(
            f"{url!r}: bucket {bucket!r} does not exist (or these credentials cannot see it)"
        )


def source_objects(url: str) -> list[tuple[str, int]]:
    """The Parquet objects of an ``s3://`` ``[source] path`` (:func:`list_objects`); no CSV."""
    if url.lower().endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt")):
        raise InputError(
            f"source path {url!r}: on S3 pooljob reads Parquet objects only "
            "(name them *.parquet, or give a prefix)"
        )
    return list_objects(url)


def _head(fs: pfs.S3FileSystem, url: str) -> tuple[int, int] | None:
    """The object's size and a 63-bit number from its ETag, from one HEAD (None if missing)."""
    try:  # a random-access file is opened with a HEAD request; a stream would GET the body
        with fs.open_input_file(_key(url)) as handle:
            meta = handle.metadata()
    except FileNotFoundError:
        return None
    etag = meta.get("ETag") or meta.get("etag") or b""
    digest = hashlib.sha256(bytes(etag)).digest()
    length = meta.get("Content-Length")
    size = int(length) if length else int(fs.get_file_info(_key(url)).size or 0)
    return size, int.from_bytes(digest[:8], "big") >> 1


def stamps(urls: list[str]) -> tuple[tuple[str, int, int], ...]:
    """``(url, size, version)`` of each existing object (HEAD requests, in parallel), sorted."""
    if not urls:
        return ()
    fs = filesystem()

    def one(url: str) -> tuple[str, int, int] | None:
        try:
            head = _head(fs, url)
        except OSError as exc:
            raise s3_error(exc, f"reading the ETag of {url!r}") from None
        return None if head is None else (url, *head)

    with ThreadPoolExecutor(min(_WORKERS, len(urls))) as pool:
        found = list(pool.map(one, urls))
    return tuple(sorted(s for s in found if s is not None))


def put_file(local: Path, url: str, fs: pfs.S3FileSystem) -> None:
    """Upload one local file to ``url`` (one object; visible whole or not at all)."""
    with open(local, "rb") as src, fs.open_output_stream(_key(url)) as out:
        while chunk := src.read(8 * 2**20):
            out.write(chunk)


def put_bytes(url: str, data: bytes, fs: pfs.S3FileSystem) -> None:
    """Write ``data`` as the object ``url`` (a single PUT: readers see old or new, whole)."""
    with fs.open_output_stream(_key(url)) as out:
        out.write(data)


def get_bytes(url: str, fs: pfs.S3FileSystem) -> bytes | None:
    """The content of the object ``url``; None if it does not exist."""
    try:
        with fs.open_input_stream(_key(url)) as stream:
            return bytes(stream.read())
    except FileNotFoundError:
        return None


def get_file(url: str, local: Path, fs: pfs.S3FileSystem) -> bool:
    """Download ``url`` to ``local``; False if the object does not exist."""
    data = get_bytes(url, fs)
    if data is None:
        return False
    local.write_bytes(data)
    return True


def exists(url: str, fs: pfs.S3FileSystem) -> bool:
    """Whether the object ``url`` exists."""
    return bool(fs.get_file_info(_key(url)).type == pfs.FileType.File)


def list_names(url: str, fs: pfs.S3FileSystem) -> list[str]:
    """Names of the objects and "folders" directly under the prefix ``url`` (sorted)."""
    infos = fs.get_file_info(pfs.FileSelector(_key(url), recursive=False, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def delete_tree(url: str, fs: pfs.S3FileSystem, warn: Callable[[str], None]) -> None:
    """Delete every object under the prefix ``url``; a failure is passed to ``warn``."""
    try:
        fs.delete_dir(_key(url))
    except OSError as exc:
        warn(f"could not delete {url!r}: {str(exc).strip().splitlines()[0]}")


def delete_object(url: str, fs: pfs.S3FileSystem) -> None:
    """Delete one object, quietly if it is already gone."""
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(_key(url))
