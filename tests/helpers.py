"""Small shared helpers for the job-level tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import polars as pl


def write_rows(path: Path, seed: int = 0, groups: int = 12, n: int = 600) -> Path:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    region = np.where(g % 2 == 0, "east", "west")
    y = 100 + rng.normal(0, 5, groups)[g] + rng.normal(0, 10, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"region": region, "store": g, "sales": y}).write_parquet(path)
    return path


def write_config(folder: Path, formula: str = "sales ~ 1 + (1 | region/store)", **output) -> Path:
    out = {"path": "out", "keep_runs": 2, **output}
    lines = [
        "[source]",
        'path = "data/*.parquet"',
        "[model]",
        f'formula = "{formula}"',
        "[output]",
        *[f"{k} = {v!r}".replace("'", '"') for k, v in out.items()],
    ]
    cfg = folder / "job.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def tree_digest(folder: Path) -> str:
    """A hash of every file (path, bytes) and symlink target under ``folder``."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            p = Path(root) / name
            h.update(str(p.relative_to(folder)).encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            else:
                h.update(p.read_bytes())
    return h.hexdigest()
