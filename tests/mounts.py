"""Small file systems for fault tests: a tiny tmpfs, read-only remounts and bind mounts.

Each helper skips the test, with the reason, when mounting is not permitted
(not root, no CAP_SYS_ADMIN, no ``mount`` binary), and always unmounts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False)


def _require(tool: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{tool} needs root (CAP_SYS_ADMIN); running as uid {os.geteuid()}")
    if shutil.which(tool) is None:
        pytest.skip(f"no {tool} binary on PATH")


def _mount(*args: str) -> None:
    res = _run("mount", *args)
    if res.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {res.stderr.strip()}")


def _umount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))


@contextmanager
def tmpfs(path: Path, size: str = "200k") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``path`` (created if missing)."""
    _require("mount")
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """Make the mount at ``path`` read-only for the block (it must be a mount point)."""
    _mount("-o", "remount,ro", str(path))
    try:
        yield path
    finally:
        _run("mount", "-o", "remount,rw", str(path))


@contextmanager
def read_only_bind(path: Path) -> Iterator[Path]:
    """Bind-mount ``path`` on itself, read-only, for the block."""
    _require("mount")
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        _umount(path)


@contextmanager
def immutable(path: Path) -> Iterator[Path]:
    """``chattr +i`` on ``path`` for the block."""
    _require("chattr")
    res = _run("chattr", "+i", str(path))
    if res.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        _run("chattr", "-i", str(path))


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` with one file, then free ``leave`` bytes of it."""
    filler = folder / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler
