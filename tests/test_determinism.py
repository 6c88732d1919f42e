"""Same input, same config: the same numbers whatever DuckDB's threads and the file layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pooljob.job.cli import main

TOL = 1e-12
KEYS = ["grouping", "a", "b", "c"]


def _rows(n: int = 6000, seed: int = 11) -> pl.DataFrame:
    """y ~ 1 + (1 | a/b/c): 4 a, 5 b per a, 6 c per b, uneven counts."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, n)
    b = rng.integers(0, 5, n)
    c = rng.integers(0, 6, n)
    y = (
        50.0
        + rng.normal(0, 3, 4)[a]
        + rng.normal(0, 2, (4, 5))[a, b]
        + rng.normal(0, 1.5, (4, 5, 6))[a, b, c]
        + rng.normal(0, 4, n)
    )
    return pl.DataFrame({"a": a, "b": b, "c": c, "y": y})


def _job(folder: Path, rows: pl.DataFrame, parts: list[np.ndarray], names: list[str], threads: int):
    data = folder / "data"
    data.mkdir(parents=True)
    for idx, name in zip(parts, names, strict=True):
        rows[idx].write_parquet(data / name, row_group_size=250)  # many row groups: parallel scan
    cfg = folder / "job.toml"
    cfg.write_text(
        "[source]\n"
        'path = "data/*.parquet"\n'
        "[model]\n"
        'formula = "y ~ 1 + (1 | a/b/c)"\n'
        "[output]\n"
        'path = "out"\n'
        "[engine]\n"
        f"threads = {threads}\n"
    )
    assert main(["--quiet", "run", str(cfg)]) == 0
    return folder / "out" / "current"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rows = _rows()
    n = rows.height
    rng = np.random.default_rng(5)
    shuffled = np.array_split(rng.permutation(n), 5)
    whole = [np.arange(n)]
    layouts = {
        "one file, 1 thread": (whole, ["all.parquet"], 1),
        "one file, 2 threads": (whole, ["all.parquet"], 2),
        "5 shuffled files, 1 thread": (shuffled, [f"{k}.parquet" for k in "edcba"], 1),
        "5 shuffled files, 2 threads": (shuffled, [f"{k}.parquet" for k in "edcba"], 2),
        "5 files renamed, 2 threads": (shuffled, [f"part-{k}.parquet" for k in range(5)], 2),
    }
    return {
        label: _job(tmp_path_factory.mktemp("det"), rows, parts, names, threads)
        for label, (parts, names, threads) in layouts.items()
    }


def _table(current: Path, name: str, keys: list[str]) -> pl.DataFrame:
    frame = pl.read_parquet(current / f"{name}.parquet")
    return frame.sort([k for k in keys if k in frame.columns])


def _max_difference(x: pl.DataFrame, y: pl.DataFrame) -> tuple[float, float]:
    """Largest absolute difference, and largest relative to its column's scale (at least 1)."""
    assert x.columns == y.columns and x.height == y.height
    worst = scaled = 0.0
    for col in x.columns:
        if x[col].dtype.is_float():
            a, b = x[col].to_numpy(), y[col].to_numpy()
            diff = float(np.max(np.abs(a - b)))
            worst = max(worst, diff)
            scaled = max(scaled, diff / max(1.0, float(np.max(np.abs(b)))))
        else:
            assert x[col].to_list() == y[col].to_list(), col
    return worst, scaled


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("estimates", KEYS),
        ("effects", KEYS),
        ("components", ["grouping"]),
        ("coefficients", ["term"]),
    ],
)
def test_outputs_agree_to_1e12_across_threads_and_file_layouts(
    runs: dict[str, Path], name: str, keys: list[str]
) -> None:
    """Measured: estimates within 4e-14 (absolute); components within 5e-13 (on variances ~20)."""
    reference = _table(runs["one file, 1 thread"], name, keys)
    for label, current in runs.items():
        diff, scaled = _max_difference(_table(current, name, keys), reference)
        assert scaled <= TOL, f"{name}, {label}: differs by {diff:.3g} ({scaled:.3g} of its scale)"
        if name == "estimates":
            assert diff <= TOL, f"{name}, {label}: differs by {diff:.3g}"


def test_fit_agrees_to_1e12(runs: dict[str, Path]) -> None:
    manifests = {k: json.loads((v / "manifest.json").read_text()) for k, v in runs.items()}
    ref = manifests["one file, 1 thread"]
    assert ref["groups"] == {"c:(b:a)": 120, "b:a": 20, "a": 4}
    for label, m in manifests.items():
        assert m["nobs"] == ref["nobs"] == 6000
        assert abs(m["objective"] - ref["objective"]) <= TOL * abs(ref["objective"]), label
        theta = np.subtract(m["optimizer"]["final"], ref["optimizer"]["final"])
        assert np.max(np.abs(theta)) <= TOL, label


def test_input_fingerprint_identifies_the_files(runs: dict[str, Path]) -> None:
    prints = {
        k: json.loads((v / "manifest.json").read_text())["input_fingerprint"]
        for k, v in runs.items()
    }
    for fp in prints.values():
        assert fp["kind"] == "files" and len(fp["sha256"]) == 64
    assert prints["one file, 1 thread"]["files"] == 1
    assert prints["5 shuffled files, 2 threads"]["files"] == 5
    # different files (paths, sizes, times) give different fingerprints
    assert len({fp["sha256"] for fp in prints.values()}) == len(prints)
