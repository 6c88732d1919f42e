# ruff: noqa: F811  (pytest fixtures imported from tests.s3 are parameters here)
"""Object storage: sources and outputs on ``s3://`` against a real S3 endpoint on 127.0.0.1.

moto's threaded server (tests/s3.py) runs once per module; each test gets a
fresh bucket.  A run from S3 equals the same run from local files; an S3
output moves ``current.json`` last and prunes to ``keep_runs``; a failed
publish leaves the pointer and the previous run as they were; incremental
refresh reads only new or changed objects; ETags fingerprint objects; bad
credentials, endpoints and buckets are one-line errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from pooljob.errors import InputError, PublishError
from pooljob.job import refresh as refresh_module
from pooljob.job.cli import main
from pooljob.job.config import load_config
from pooljob.job.fingerprint import fingerprint, snapshot
from pooljob.job.run import OUTPUT_TABLES, RunOutcome, run
from pooljob.scan import s3 as s3_module
from pooljob.scan.s3 import glob_regex
from pooljob.scan.source import Source, open_config_source
from tests.s3 import S3, s3, s3_server  # noqa: F401
from tests.test_incremental import assert_same_fit

pytest.importorskip("moto")

FORMULA = "sales ~ 1 + (1 | region/store)"
_EFFECTS = np.random.default_rng(7).normal(0, 5, 12)


def _rows(path: Path, seed: int, n: int = 150) -> None:
    rng = np.random.default_rng(seed)
    store = rng.integers(0, 12, n)
    region = np.array(["east", "west", "north"])[store % 3]
    sales = 100 + _EFFECTS[store] + rng.normal(0, 10, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"region": region, "store": store, "sales": sales}).write_parquet(path)


def _config(folder: Path, name: str, source: str, out: str, **extra: Any) -> Path:
    output = {"path": out, "keep_runs": 2, **extra.pop("output", {})}
    lines = ["[source]", f"path = {json.dumps(source)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    lines += ["[model]", f'formula = "{FORMULA}"', "[output]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in output.items()]
    cfg = folder / f"{name}.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _upload(s3: S3, local: Path, prefix: str) -> None:
    for file in sorted(local.rglob("*.parquet")):
        s3.put(f"{prefix}/{file.relative_to(local).as_posix()}", file)


def _tables(outcome: RunOutcome, s3: S3 | None = None) -> dict[str, pl.DataFrame]:
    """The published tables of a run, local or on S3, without the run id."""
    frames = {}
    for name in OUTPUT_TABLES:
        if isinstance(outcome.run_dir, Path):
            frame = pl.read_parquet(outcome.run_dir / f"{name}.parquet")
        else:
            assert s3 is not None
            key = outcome.run_dir.removeprefix(f"s3://{s3.bucket}/") + f"/{name}.parquet"
            frame = pl.read_parquet(s3.get(key))
        frames[name] = frame.drop([c for c in frame.columns if c == "run_id"])
    return frames


def _same_frame(x: pl.DataFrame, y: pl.DataFrame, name: str) -> None:
    """Keys and text equal, numbers to 1e-12 of their column's scale (tests/test_determinism.py:
    DuckDB's threads add in an order that depends on how the scan is split)."""
    assert x.schema == y.schema and x.height == y.height, name
    for c in x.columns:
        if x[c].dtype.is_float():
            u, v = x[c].to_numpy(), y[c].to_numpy()
            scale = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12 * scale, err_msg=f"{name}.{c}")
        else:
            assert x[c].equals(y[c]), f"{name}.{c}"


def _same_tables(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> None:
    for name in OUTPUT_TABLES:
        _same_frame(a[name], b[name], name)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    logger = logging.getLogger("pooljob")
    handlers, level = logger.handlers[:], logger.level
    logger.handlers[:] = []  # not a handler another module's test left on a closed stream
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for day in (1, 2, 3):
        _rows(tmp_path / "data" / f"day={day}" / "part.parquet", seed=day)
    return tmp_path / "data"


@pytest.mark.parametrize("hive", [False, True], ids=["plain", "hive"])
def test_run_from_s3_equals_the_run_from_local_files(
    s3: S3, data: Path, tmp_path: Path, hive: bool
) -> None:
    _upload(s3, data, "in")
    if hive:
        local, remote = str(data / "**" / "*.parquet"), s3.url("in/**/*.parquet")
        extra = {"where": "day >= 2"}  # a partition column, pushed into the dataset
    else:
        local, remote = str(data / "day=1" / "*.parquet"), s3.url("in/day=1/*.parquet")
        extra = {}
    a = run(load_config(_config(tmp_path, "local", local, "out_local", **extra)))
    b = run(load_config(_config(tmp_path, "remote", remote, "out_remote", **extra)))
    _same_tables(_tables(a), _tables(b))
    assert a.manifest["rows"] == b.manifest["rows"]
    assert b.manifest["input_fingerprint"]["kind"] == "files"
    assert b.manifest["input_fingerprint"]["files"] == (3 if hive else 1)


def test_hive_columns_and_pushdown_match_duckdb(s3: S3, data: Path) -> None:
    _upload(s3, data, "in")
    with open_config_source(path=str(data / "**" / "*.parquet")) as local:
        want = local.columns
    with open_config_source(path=s3.url("in"), where="day = 2") as remote:
        assert remote.columns == want  # a prefix means its Parquet objects; day is BIGINT
        plan = remote.relation("explain select sales from source").fetchall()[0][1]
        rows = remote.arrow("select count(*) as n from source").column("n")[0].as_py()
    assert "Filters" in plan and "day" in plan and "Projections" in plan
    assert rows == 150
    from pooljob import fit  # the Python API takes an s3:// path as data

    remote_fit, local_fit = fit(FORMULA, s3.url("in")), fit(FORMULA, str(data / "**/*.parquet"))
    _same_frame(remote_fit.estimates, local_fit.estimates, "estimates")


def test_glob_matches_like_duckdb() -> None:
    regex = glob_regex("b/in/*/x?.parquet")
    assert regex.match("b/in/day=1/x1.parquet")
    assert not regex.match("b/in/day=1/deeper/x1.parquet")
    assert glob_regex("b/in/**/*.parquet").match("b/in/a/b/c.parquet")
    assert glob_regex("b/in/**/*.parquet").match("b/in/c.parquet")
    assert glob_regex("b/[!x]*.parquet").match("b/a.parquet")
    assert not glob_regex("b/[!x]*.parquet").match("b/x.parquet")


def test_s3_output_moves_current_json_and_prunes(s3: S3, data: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, "job", str(data / "**" / "*.parquet"), s3.url("out"))
    killed = "out/runs/20000101T000000000000Z-1/estimates.parquet"  # no manifest: never published
    s3.put(killed, b"partial")
    ids = []
    for _ in range(3):
        outcome = run(load_config(cfg))
        ids.append(outcome.run_id)
        pointer = json.loads(s3.get("out/current.json"))
        assert pointer["run_id"] == outcome.run_id
        assert pointer["path"] == f"runs/{outcome.run_id}"
        names = sorted(pointer["files"])
        assert names == sorted([*(f"{t}.parquet" for t in OUTPUT_TABLES), "manifest.json"])
        manifest = json.loads(s3.get(f"out/runs/{outcome.run_id}/manifest.json"))
        assert manifest["run_id"] == outcome.run_id
    runs = {k.split("/")[2] for k in s3.keys("out/runs")}
    assert runs == set(ids[1:])  # keep_runs = 2
    published = _tables(outcome, s3)
    for name in OUTPUT_TABLES:  # what was uploaded is what the run made
        assert published[name].equals(getattr(outcome.result, name)), name
    # a reader: the pointer, then the run it names (polars reads s3:// from the AWS_* environment)
    path = json.loads(s3.get("out/current.json"))["path"]
    assert pl.read_parquet(f"{s3.url('out')}/{path}/estimates.parquet").equals(
        outcome.result.estimates
    )


def test_failed_publish_leaves_current_json_and_the_previous_run(
    s3: S3, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cfg = _config(tmp_path, "job", str(data / "**" / "*.parquet"), s3.url("out"))
    first = run(load_config(cfg))
    before = {k: s3.get(k) for k in s3.keys("out")}
    put = s3_module.put_file
    calls: list[str] = []

    def fail_third(local: Path, url: str, fs: Any) -> None:
        calls.append(url)
        if len(calls) == 3:
            raise OSError("When uploading: AWS Error NETWORK_CONNECTION (injected)\nmore")
        put(local, url, fs)

    monkeypatch.setattr(s3_module, "put_file", fail_third)
    with pytest.raises(PublishError, match="injected"):
        run(load_config(cfg))
    assert {k: s3.get(k) for k in s3.keys("out")} == before
    assert json.loads(s3.get("out/current.json"))["run_id"] == first.run_id
    calls.clear()
    assert main(["--quiet", "run", str(cfg)]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "injected" in err


def test_incremental_refresh_reads_only_the_new_object(
    s3: S3, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _upload(s3, data, "in")
    cfg = _config(tmp_path, "job", s3.url("in/**/*.parquet"), s3.url("out"))
    scanned: list[list[str]] = []
    original = refresh_module.open_file_list

    def spy(files: list[str], **kwargs: Any) -> Any:
        scanned.append(list(files))
        return original(files, **kwargs)

    monkeypatch.setattr(refresh_module, "open_file_list", spy)
    first = run(load_config(cfg))
    assert first.manifest["refresh"]["mode"] == "full"
    assert any(k.startswith("out/state/") for k in s3.keys("out"))
    _rows(tmp_path / "new.parquet", seed=4)
    s3.put("in/day=4/part.parquet", tmp_path / "new.parquet")
    scanned.clear()
    second = run(load_config(cfg))
    assert scanned == [[s3.url("in/day=4/part.parquet")]]
    assert second.manifest["refresh"] == {
        "mode": "incremental",
        "files_scanned": 1,
        "files_reused": 3,
        "files_removed": 0,
    }
    _rows(tmp_path / "new.parquet", seed=4)  # the same bytes: the same ETag, nothing to scan
    scanned.clear()
    assert run(load_config(cfg)).manifest["refresh"]["files_scanned"] == 0
    assert scanned == []
    full = _config(
        tmp_path, "full", s3.url("in/**/*.parquet"), "full", output={"incremental": False}
    )
    assert_same_fit(second, run(load_config(full)))


def test_fingerprint_changes_when_an_object_is_overwritten_with_the_same_size(
    s3: S3, tmp_path: Path
) -> None:
    s3.put("in/a.parquet", b"x" * 64)
    cfg = load_config(_config(tmp_path, "job", s3.url("in/*.parquet"), "out"))
    first = snapshot(cfg.source)
    s3.put("in/a.parquet", b"y" * 64)
    second = snapshot(cfg.source)
    assert first.files[0][:2] == second.files[0][:2] == (s3.url("in/a.parquet"), 64)
    assert fingerprint(first)["sha256"] != fingerprint(second)["sha256"]
    assert fingerprint(first)["bytes"] == 64


def test_an_object_overwritten_during_the_scan_is_exit_3(
    s3: S3, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _upload(s3, data, "in")
    cfg = _config(tmp_path, "job", s3.url("in"), s3.url("out"))
    original = Source.arrow
    key = "in/day=2/part.parquet"

    def overwrite_then_read(self: Source, *args: object, **kwargs: object) -> object:
        if not done:  # another writer replaces an object mid-scan
            _rows(tmp_path / "other.parquet", seed=9)
            s3.put(key, tmp_path / "other.parquet")
            done.append(True)
        return original(self, *args, **kwargs)

    done: list[bool] = []
    monkeypatch.setattr(Source, "arrow", overwrite_then_read)
    assert main(["--quiet", "run", str(cfg)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{s3.url(key)!r} was overwritten" in err[0], err
    assert "nothing was published" in err[0] and s3.keys("out") == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no secret", "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"),
        ("plain http", "set AWS_ALLOW_HTTP=true"),
        ("unreachable", "failed"),
        ("no bucket", "bucket 'no-such-bucket' does not exist"),
        ("no object", "matches no object"),
        ("csv", "on S3 pooljob reads Parquet objects only"),
    ],
)
def test_bad_s3_settings_are_one_line_exit_3(
    s3: S3,
    s3_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    case: str,
    message: str,
) -> None:
    source = s3.url("in/*.parquet")
    if case == "no secret":
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    elif case == "plain http":
        monkeypatch.delenv("AWS_ALLOW_HTTP")
    elif case == "unreachable":
        from tests.s3 import _free_port

        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    elif case == "no bucket":
        source = "s3://no-such-bucket/in/*.parquet"
    elif case == "csv":
        source = s3.url("in/*.csv")
    cfg = _config(tmp_path, "job", source, "out")
    assert main(["--quiet", "run", str(cfg)]) == InputError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_an_output_url_without_a_bucket_is_a_config_error(tmp_path: Path, capsys: Any) -> None:
    cfg = _config(tmp_path, "job", "data/*.parquet", "s3://")
    assert main(["--quiet", "validate", str(cfg)]) == 2
    assert "[output] path = 's3://' names no bucket" in capsys.readouterr().err


def test_output_to_a_missing_bucket_is_exit_5(
    s3: S3, data: Path, tmp_path: Path, capsys: Any
) -> None:
    cfg = _config(tmp_path, "job", str(data / "day=1" / "*.parquet"), "s3://no-such-bucket/out")
    assert main(["--quiet", "run", str(cfg)]) == PublishError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-bucket" in err[0], err


def test_cli_validate_explain_and_a_predict_table_on_s3(
    s3: S3, data: Path, tmp_path: Path, capsys: Any
) -> None:
    _upload(s3, data, "in")
    cells = pl.DataFrame({"region": ["east", "west"], "store": [0, 1]})
    cells.write_parquet(tmp_path / "cells.parquet")
    s3.put("cells/cells.parquet", tmp_path / "cells.parquet")
    cfg = _config(tmp_path, "job", s3.url("in"), s3.url("out"))
    with cfg.open("a") as f:
        f.write(f'[predict]\npath = "{s3.url("cells/cells.parquet")}"\n')
    assert main(["--quiet", "validate", str(cfg)]) == 0
    assert main(["explain", str(cfg)]) == 0
    assert "-- __pooljob_s3_objects: the objects" in capsys.readouterr().out
    assert main(["--quiet", "run", str(cfg)]) == 0
    run_path = json.loads(s3.get("out/current.json"))["path"]
    predictions = pl.read_parquet(s3.get(f"out/{run_path}/predictions.parquet"))
    assert predictions.height == 2 and predictions["estimate"].is_not_null().all()
    assert main(["report", f"{s3.url('out')}/{run_path}"]) == 2
    assert "copy the run there first" in capsys.readouterr().err


def test_hive_partition_types_are_duckdb_s(s3: S3, tmp_path: Path) -> None:
    folders = [
        "n=-3/d=2024-01-02/t=2024-01-02 10%3A00%3A00/u=2024-01-02 10:00:00/f=1.5/s=a%20b",
        "n=7/d=2024-02-03/t=2024-01-03 11%3A30%3A00/u=2024-01-03 11:30:00.5/f=2/s=007",
    ]
    for i, folder in enumerate(folders):
        _rows(tmp_path / "h" / folder / "p.parquet", seed=i, n=5)
        s3.put(f"h/{folder}/p.parquet", tmp_path / "h" / folder / "p.parquet")
    with open_config_source(path=str(tmp_path / "h" / "**" / "*.parquet")) as local:
        want = local.arrow("select * from source order by all")
    with open_config_source(path=s3.url("h")) as remote:
        got = remote.arrow("select * from source order by all")
        types = remote.columns
    assert types == local.columns and types["u"] == "TIMESTAMP" and types["n"] == "BIGINT"
    assert got.equals(want.select(got.column_names))
