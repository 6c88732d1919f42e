"""The optional sections of the job config that name a table of cells: [poststratify], [predict].

Paths are resolved against the config file's directory; problems are
collected into the caller's list (reported at once, on one line).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from pooljob.model.options import PoststratifyConfig, PredictConfig
from pooljob.outputs.s3_publish import work_dir

#: Where an S3 output keeps its local lock and staging folder (one folder per output URL).
S3_WORK_ROOT = Path(tempfile.gettempdir()) / "pooljob-s3"


def s3_work_dir(url: str) -> Path:
    """The local work folder of the S3 output ``url``: its lock and staging area."""
    return work_dir(url, S3_WORK_ROOT)


def resolve_path(base: Path, value: str) -> str:
    """``value`` relative to ``base`` (a URL as given)."""
    if "://" in value:
        return value
    return os.path.normpath(base / value)


def poststratify_section(
    raw: dict[str, Any], base: Path, problems: list[str]
) -> PoststratifyConfig | None:
    """``[poststratify]``: the population table, its weight, ``by``, draws and seed."""
    body = raw.get("poststratify")
    if not isinstance(body, dict):
        return None
    for key in ("path", "weight"):
        if key not in body:
            problems.append(f"missing [poststratify] {key}")
    by = body.get("by", [])
    if isinstance(by, list) and not all(isinstance(c, str) and c for c in by):
        problems.append(f"[poststratify] by = {by!r} must be a list of column names")
    elif isinstance(by, list) and len(set(by)) != len(by):
        problems.append(f"[poststratify] by = {by!r} names a column twice")
    draws, seed = _draws(body, "poststratify", problems)
    path, weight = body.get("path"), body.get("weight")
    if not (isinstance(path, str) and isinstance(weight, str) and isinstance(by, list)):
        return None
    if not path.strip():
        problems.append("[poststratify] path is empty")
    return PoststratifyConfig(
        path=resolve_path(base, path),
        weight=weight,
        by=tuple(str(c) for c in by),
        draws=draws,
        seed=seed,
    )


def _draws(body: dict[str, Any], section: str, problems: list[str]) -> tuple[int, int]:
    """``draws`` and ``seed`` of a section (the defaults where wrong; problems noted)."""
    draws = body.get("draws", 1000)
    if isinstance(draws, int) and not isinstance(draws, bool) and not 100 <= draws <= 100_000:
        problems.append(f"[{section}] draws = {draws} must be between 100 and 100000")
    seed = body.get("seed", 0)
    if isinstance(seed, int) and not isinstance(seed, bool) and seed < 0:
        problems.append(f"[{section}] seed = {seed} must be >= 0")
    return (
        int(draws) if isinstance(draws, int) else 1000,
        int(seed) if isinstance(seed, int) else 0,
    )


def predict_section(raw: dict[str, Any], base: Path, problems: list[str]) -> PredictConfig | None:
    """``[predict]``: the table of cells to score, draws and seed."""
    body = raw.get("predict")
    if not isinstance(body, dict):
        return None
    draws, seed = _draws(body, "predict", problems)
    path = body.get("path")
    if "path" not in body:
        problems.append("missing [predict] path")
    if not isinstance(path, str):
        return None
    if not path.strip():
        problems.append("[predict] path is empty")
    return PredictConfig(path=resolve_path(base, path), draws=draws, seed=seed)
