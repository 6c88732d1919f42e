"""Trusted SQL, still one statement: ``[source] where`` and ``query`` go through DuckDB's parser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from pooljob.errors import ConfigError, InputError
from pooljob.job.cli import main
from pooljob.job.config import parse_config
from pooljob.job.run import run
from pooljob.scan.source import open_config_source
from tests.helpers import write_rows

FORMULA = "sales ~ 1 + (1 | region/store)"


def _raw(source: dict[str, str]) -> dict[str, dict[str, str]]:
    return {"source": source, "model": {"formula": FORMULA}, "output": {"path": "out"}}


def _write_job(folder: Path, source: dict[str, str]) -> Path:
    write_rows(folder / "data" / "rows.parquet")
    body = "\n".join(f"{k} = {v!r}" for k, v in source.items())
    cfg = folder / "job.toml"
    cfg.write_text(
        f"[source]\n{body}\n[model]\nformula = '{FORMULA}'\n[output]\npath = 'out'\n",
        encoding="utf-8",
    )
    return cfg


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


INJECTED = "1=1); copy (select 42) to 'x.csv'; select (1"


@pytest.mark.parametrize("command", ["run", "validate", "explain"])
def test_where_that_smuggles_a_statement_is_refused_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, command: str
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    cfg = _write_job(job, {"path": "data/*.parquet", "where": INJECTED})
    monkeypatch.chdir(tmp_path)
    assert main([command, str(cfg)]) == 2
    err = _error_line(capsys)
    assert "[source] where = " in err and "must be one SQL expression" in err
    assert "copy (select 42)" in err  # the value received
    assert not (tmp_path / "x.csv").exists() and not (job / "x.csv").exists()
    assert not (job / "out").exists()


@pytest.mark.parametrize(
    "where",
    [
        "store < 6; select 1",
        "store < 6) union all (select * from source_raw",
        "store < 6 limit 1",
        "store < 6) order by (1",
        "store < 6, 1",
    ],
)
def test_where_must_be_one_expression(tmp_path: Path, where: str) -> None:
    raw = {
        "source": {"path": "data/*.parquet", "where": where},
        "model": {"formula": FORMULA},
        "output": {"path": "out"},
    }
    with pytest.raises(ConfigError, match=r"must be one SQL expression"):
        parse_config(raw, tmp_path / "job.toml")


def test_where_with_a_comment_or_a_subquery_still_works(tmp_path: Path) -> None:
    write_rows(tmp_path / "data" / "rows.parquet")
    for where in (
        "store < 6 -- the first six",
        "store in (select 1 union select 2 union all select 4)",
    ):
        cfg = parse_config(
            {
                "source": {"path": "data/*.parquet", "where": where},
                "model": {"formula": FORMULA},
                "output": {"path": "out"},
            },
            tmp_path / "job.toml",
        )
        outcome = run(cfg)
        stores = outcome.result.estimates["store"].drop_nulls().unique().to_list()
        assert stores and max(stores) <= 5


@pytest.mark.parametrize(
    ("query", "kinds"),
    [
        ("select 1 as sales; copy (select 42) to 'x.csv'", "2 statements (SELECT, COPY)"),
        ("copy (select 42) to 'x.csv'", "a COPY statement"),
        ("attach 'x.duckdb' as x", "a ATTACH statement"),
        ("install httpfs", "a LOAD statement"),
        ("load httpfs", "a LOAD statement"),
        ("pragma version", "a PRAGMA statement"),
        ("set threads = 1", "a SET statement"),
        ("call pragma_version()", "a CALL statement"),
        ("create table t as select 1", "a CREATE statement"),
    ],
)
def test_query_must_be_one_select(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, query: str, kinds: str
) -> None:
    cfg = _write_job(tmp_path, {"query": query})
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(cfg)]) == 2
    err = _error_line(capsys)
    assert "[source] query must be one SELECT statement" in err and kinds in err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.duckdb").exists()
    opened = open_config_source(query=query)
    with pytest.raises(ConfigError, match="one SELECT statement"), opened:  # when opened, too
        pass
    assert not (tmp_path / "x.csv").exists()


def test_select_forms_are_accepted(tmp_path: Path) -> None:
    rows = tmp_path / "data" / "rows.parquet"
    write_rows(rows)
    for query in (
        f"with r as (select * from read_parquet('{rows}')) select * from r",
        f"from read_parquet('{rows}') -- a comment at the end",
        f"select * from read_parquet('{rows}');",
    ):
        with open_config_source(query=query) as src:
            assert list(src.columns) == ["region", "store", "sales"]


def test_relative_paths_in_query_resolve_against_the_config_folder(tmp_path: Path) -> None:
    job = tmp_path / "job"
    write_rows(job / "data" / "rows.parquet")
    elsewhere = tmp_path / "elsewhere"  # the working directory, with other data under data/
    write_rows(elsewhere / "data" / "other.parquet", seed=1)
    by_path = run(parse_config(_raw({"path": "data/*.parquet"}), job / "path.toml"))
    for name, source in {
        "glob.toml": {"query": "select * from read_parquet('data/*.parquet')"},
        "file.toml": {
            "query": "select * from 'data/rows.parquet'",
            "where": "store in (select store from read_parquet('data/rows.parquet'))",
        },
    }.items():
        body = "\n".join(f"{k} = {v!r}" for k, v in source.items())
        (job / name).write_text(
            f"[source]\n{body}\n[model]\nformula = '{FORMULA}'\n[output]\npath = 'out-{name}'\n"
        )
        done = subprocess.run(
            [sys.executable, "-m", "pooljob.job.cli", "--quiet", "run", str(job / name)],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        current = job / f"out-{name}" / "current"
        assert pl.read_parquet(current / "components.parquet").equals(by_path.result.components)
    assert not (elsewhere / "out-glob.toml").exists()


def test_user_sql_cannot_change_settings_or_load_extensions(tmp_path: Path) -> None:
    rows = write_rows(tmp_path / "data" / "rows.parquet")
    with open_config_source(path=str(rows), threads=1, memory_limit="500MB") as src:
        con = src._con
        assert con is not None
        settings = con.execute(
            "select current_setting('autoload_known_extensions'), "
            "current_setting('autoinstall_known_extensions'), "
            "current_setting('lock_configuration'), current_setting('threads')"
        ).fetchone()
        assert settings == (False, False, True, 1)
        for statement in ("set threads = 2", "reset memory_limit", "set file_search_path = '/'"):
            with pytest.raises(duckdb.Error, match="locked"):
                con.execute(statement)
    # a function of an extension that is not loaded is an error, not a download
    query = f"select *, st_point(store, sales) as p from read_parquet('{rows}')"
    with pytest.raises(InputError, match="spatial extension"), open_config_source(query=query):
        pass
