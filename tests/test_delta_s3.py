# ruff: noqa: F811  (pytest fixtures imported from tests.s3 are parameters here)
"""``[output] format = "delta"`` with ``path = "s3://bucket/prefix"``, against moto.

The Delta tables on S3 hold exactly what a local Delta run publishes; the
``runs`` protocol, time travel, ``keep_runs`` vacuum, a failed run and an
overlapping writer behave as on a local disk; the docs' readers run as
written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pooljob.errors import PublishError
from pooljob.job.cli import main
from pooljob.outputs import delta
from pooljob.outputs.delta import RUNS_TABLE, latest_run
from pooljob.scan.s3 import storage_options
from tests.helpers import write_config, write_rows
from tests.s3 import S3, s3, s3_server  # noqa: F401

pytest.importorskip("deltalake")
pytest.importorskip("moto")

TABLES = ("estimates", "effects", "coefficients", "components")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "object-storage.md"


def _read(where: str, table: str, version: int | None = None) -> pl.DataFrame:
    return pl.read_delta(f"{where}/{table}", version=version, storage_options=storage_options())


def _consistent(where: str) -> dict[str, Any]:
    """The latest complete run by the protocol; every table at its version is that run."""
    run = latest_run(where)
    assert set(run["tables"]) == set(TABLES)
    for table, version in run["tables"].items():
        assert _read(where, table, version)["run_id"].unique().to_list() == [run["run_id"]]
    return run


def _data_files(s3: S3, table: str) -> list[str]:
    return [k for k in s3.keys(f"out/{table}") if "_delta_log" not in k]


def test_delta_on_s3_equals_local_delta_travels_back_and_reads_as_documented(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    write_rows(tmp_path / "data" / "part-0.parquet")
    local = write_config(tmp_path, format="delta", path="local")
    assert main(["--quiet", "run", str(local)]) == 0
    cfg = write_config(tmp_path, format="delta", path=s3.url("out"))
    assert main(["--quiet", "run", str(cfg)]) == 0
    where = s3.url("out")
    first = _consistent(where)
    assert first["sequence"] == 1 and first["manifest"]["format"] == "delta"
    reference = latest_run(tmp_path / "local")
    for table in TABLES:  # the same numbers as the local Delta run, bit for bit
        mine = _read(where, table, first["tables"][table]).drop("run_id")
        theirs = pl.read_delta(str(tmp_path / "local" / table)).drop("run_id")
        assert mine.equals(theirs), table
    assert first["tables"] == reference["tables"]
    assert any(k.startswith("out/state/") for k in s3.keys("out"))  # the store is on S3
    assert not any(k.startswith("out/current") for k in s3.keys("out"))

    write_rows(tmp_path / "data" / "part-1.parquet", seed=1)
    assert main(["--quiet", "run", str(cfg)]) == 0
    second = _consistent(where)
    assert second["sequence"] == 2 and second["manifest"]["refresh"]["mode"] == "incremental"
    # time travel: the first run is still readable at the versions runs names
    assert _read(where, "estimates", first["tables"]["estimates"])["n"].sum() == 2 * 600
    assert _read(where, "estimates")["n"].sum() == 2 * 1200

    # the readers of docs/object-storage.md, as written, on this bucket
    text = DOCS.read_text()
    section = text[text.index("## Delta tables on S3") :]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "options = {" in b]
    assert len(blocks) == 2
    options = storage_options()
    for block in blocks:
        code = block.replace("s3://bucket/prefix", where)
        code = re.sub(r"(?m)^options = \{.*\}.*$", f"options = {options!r}", code)
        names: dict[str, Any] = {}
        exec(compile(code, str(DOCS), "exec"), names)
        assert set(names["estimates"]["run_id"]) == {second["run_id"]}, block

    # pooljob report reads the latest complete run of a Delta output on S3 (exported as a
    # Parquet run folder; the report itself, matplotlib's, is tests/test_report.py's)
    from pooljob.outputs import report

    def fake_report(run_dir: str, grouping: Any, output: Path) -> Path:
        manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
        estimates = pl.read_parquet(Path(run_dir) / "estimates.parquet")
        assert estimates.equals(_read(where, "estimates").drop("run_id"))
        output.write_text(manifest["run_id"])
        return output

    monkeypatch.setattr(report, "write_report", fake_report)
    monkeypatch.chdir(tmp_path)
    assert main(["--quiet", "report", where, "--output", "r.html"]) == 0
    assert (tmp_path / "r.html").read_text() == second["run_id"]
    assert main(["--quiet", "report", s3.url("nothing"), "--output", "r.html"]) == 2
    assert "Delta output on S3" in capsys.readouterr().err


def test_failures_leave_the_previous_run_and_keep_runs_vacuums_s3(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    write_rows(tmp_path / "data" / "part-0.parquet")
    cfg = write_config(tmp_path, format="delta", path=s3.url("out"), keep_runs=1)
    where = s3.url("out")
    assert main(["--quiet", "run", "--full", str(cfg)]) == 0
    before = _consistent(where)
    s3.put("out/coefficients/part-00000-killed-c000.zstd.parquet", b"never committed")

    # a failure after two tables were committed: runs still names the previous run
    write = delta._write
    calls: list[str] = []

    def fail_third(output: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) == 3:
            raise OSError("Generic S3 error (injected)\nmore")
        return write(output, name, *args, **kwargs)

    monkeypatch.setattr(delta, "_write", fail_third)
    assert main(["--quiet", "run", "--full", str(cfg)]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "injected" in err
    assert _consistent(where)["run_id"] == before["run_id"]
    for table in TABLES:  # every table's latest version is a complete table
        assert _read(where, table)["run_id"].n_unique() == 1, table

    # another writer commits to runs after this run read it: the runs commit is refused
    def overlap(output: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == RUNS_TABLE:
            from deltalake import write_deltalake

            rows = _read(where, RUNS_TABLE).to_arrow()
            write_deltalake(f"{where}/{RUNS_TABLE}", rows, mode="overwrite", storage_options=opts)
        return write(output, name, *args, **kwargs)

    opts = storage_options()
    monkeypatch.setattr(delta, "_write", overlap)
    with pytest.raises(PublishError, match="another writer committed"):
        from pooljob.job.config import load_config
        from pooljob.job.run import run

        run(load_config(cfg), full=True)
    assert _consistent(where)["run_id"] == before["run_id"]

    monkeypatch.setattr(delta, "_write", write)
    assert main(["--quiet", "run", "--full", str(cfg)]) == 0  # takes over and cleans up
    last = _consistent(where)
    assert last["sequence"] == before["sequence"] + 1
    assert _read(where, RUNS_TABLE).height == 1  # keep_runs = 1
    for table in TABLES:  # only the files of the last run stay: old, failed and killed
        assert len(_data_files(s3, table)) == 1, (table, _data_files(s3, table))
    with pytest.raises(Exception, match=r"(?i)not found|no such|404"):
        _read(where, "estimates", before["tables"]["estimates"])  # vacuumed


def test_one_format_into_the_other_on_s3_is_exit_5(s3: S3, tmp_path: Path, capsys: Any) -> None:
    write_rows(tmp_path / "data" / "part-0.parquet")
    s3.put("parquet/current.json", b'{"run_id": "x", "path": "runs/x"}')
    cfg = write_config(tmp_path, format="delta", path=s3.url("parquet"))
    assert main(["--quiet", "run", str(cfg)]) == 5
    assert "holds Parquet runs" in capsys.readouterr().err
    from deltalake import write_deltalake

    write_deltalake(
        s3.url("delta/runs"), pl.DataFrame({"a": [1]}), storage_options=storage_options()
    )
    cfg = write_config(tmp_path, path=s3.url("delta"))
    assert main(["--quiet", "run", str(cfg)]) == 5
    assert "holds Delta tables" in capsys.readouterr().err


def test_commits_are_conditional_puts_the_server_enforces(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """delta-rs creates each commit file with If-None-Match: * (docs/object-storage.md)."""
    import boto3
    import moto.s3.responses as responses
    from botocore.exceptions import ClientError
    from deltalake import write_deltalake

    seen: list[str | None] = []
    put = responses.S3Response._key_response_put

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "/_delta_log/" in self.path and self.path.endswith(".json"):
            seen.append(self.headers.get("If-None-Match"))
        return put(self, *args, **kwargs)

    monkeypatch.setattr(responses.S3Response, "_key_response_put", spy)
    frame = pl.DataFrame({"a": [1]})
    write_deltalake(s3.url("t"), frame, storage_options=storage_options())
    write_deltalake(s3.url("t"), frame, mode="overwrite", storage_options=storage_options())
    assert seen == ["*", "*"]
    env = s3.server.env
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    key = "t/_delta_log/00000000000000000001.json"
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=s3.bucket, Key=key, Body=b"{}", IfNoneMatch="*")
