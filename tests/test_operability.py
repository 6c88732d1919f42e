"""Operability: JSON log lines, stage timings, exit codes, `validate`, `explain`, fingerprints."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.job.cli import build_parser, main
from pooljob.job.config import load_config
from pooljob.job.fingerprint import fingerprint, snapshot
from pooljob.job.lock import output_lock
from pooljob.scan.source import Source, open_config_source
from tests.helpers import write_config, write_rows

STAGES = ("open", "scan", "fit", "tables", "write", "publish")


@pytest.fixture
def job(tmp_path: Path) -> Path:
    write_rows(tmp_path / "data" / "part-0.parquet")
    return write_config(tmp_path)


@pytest.fixture
def dirty_job(tmp_path: Path) -> Path:
    """600 rows of which 3 have a null key, 2 a null response and 1 a NaN response."""
    rng = np.random.default_rng(1)
    store = rng.integers(0, 12, 600).tolist()
    sales: list[float | None] = (100 + rng.normal(0, 10, 600)).tolist()
    region: list[str | None] = ["east" if s % 2 == 0 else "west" for s in store]
    region[:3] = [None] * 3
    sales[3:5] = [None, None]
    sales[5] = float("nan")
    frame = pl.DataFrame(
        {"region": region, "store": store, "sales": sales},
        schema={"region": pl.String, "store": pl.Int64, "sales": pl.Float64},
    )
    (tmp_path / "data").mkdir()
    frame.write_parquet(tmp_path / "data" / "part-0.parquet")
    return write_config(tmp_path)


def _json_lines(text: str) -> list[dict]:
    lines = text.strip().splitlines()
    assert lines, "nothing on stderr"
    return [json.loads(line) for line in lines]  # every line must be one JSON object


def test_json_logs_are_one_object_per_line_with_stages(dirty_job: Path, capsys) -> None:
    assert main(["--log-format", "json", "run", str(dirty_job)]) == 0
    records = _json_lines(capsys.readouterr().err)
    run_id = records[0]["run_id"]
    for r in records:
        assert {"time", "level", "event", "message"} <= set(r)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"])
        assert r["run_id"] == run_id
    by_event = {r["event"]: r for r in records}
    for stage in STAGES:
        assert by_event[stage]["stage"] == stage
        assert by_event[stage]["seconds"] >= 0.0
    scan = by_event["scan"]
    assert scan["rows_read"] == 600 and scan["rows_used"] == 594
    expected = {"null_group_key": 3, "null_response": 2, "nonfinite_response": 1}
    assert {k: v for k, v in scan["dropped"].items() if v} == expected
    assert by_event["fit"]["converged"] is True and by_event["fit"]["objective"] > 0
    assert by_event["done"]["run_dir"].endswith(run_id)
    assert [r["event"] for r in records][:2] == ["start", "open"]


def test_python_warnings_are_json_lines_too() -> None:
    code = (
        "import warnings\n"
        "from pooljob.job.logs import setup_logging\n"
        "setup_logging(fmt='json')\n"
        "warnings.warn('careful: a RuntimeWarning from numpy, say')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    (record,) = _json_lines(res.stderr)
    assert record["level"] == "warning" and record["event"] == "python_warning"
    assert "careful" in record["message"]


def test_text_logs_name_stages_and_dropped_rows(dirty_job: Path, capsys) -> None:
    assert main(["run", str(dirty_job)]) == 0
    err = capsys.readouterr().err
    assert all(line.startswith("pooljob INFO: ") for line in err.strip().splitlines())
    for stage in STAGES:
        assert f"pooljob INFO: {stage}: " in err
    assert "600 rows read, 594 used; dropped 3 null group key, 2 null response" in err


def test_json_error_is_one_json_line(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[source]\npath = "x.parquet"\n[model]\nformula = "y ~ 1 + (1 | g)"\n')
    assert main(["run", str(cfg), "--log-format", "json"]) == 2
    (record,) = _json_lines(capsys.readouterr().err)
    assert record["level"] == "error" and record["event"] == "error"
    assert record["exit_code"] == 2 and record["error"] == "ConfigError"
    assert "missing section [output]" in record["message"]


def test_json_lock_error_names_the_holder(job: Path, capsys) -> None:
    with output_lock(job.parent / "out", "holder-run"):
        assert main(["--log-format=json", "run", str(job)]) == 4
    records = _json_lines(capsys.readouterr().err)
    assert records[-1]["exit_code"] == 4 and "holder-run" in records[-1]["message"]
    assert len(records) == 1


def test_json_usage_error_is_one_json_line(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--log-format", "json", "run"])
    assert info.value.code == 2
    (record,) = _json_lines(capsys.readouterr().err)
    assert record["exit_code"] == 2 and "config" in record["message"]


def test_json_internal_error_with_verbose_keeps_one_line(job: Path, monkeypatch, capsys) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug\nwith two lines")

    monkeypatch.setattr(Source, "arrow", broken)
    assert main(["--log-format", "json", "--verbose", "run", str(job)]) == 70
    records = _json_lines(capsys.readouterr().err)
    err = records[-1]
    assert err["event"] == "internal_error" and err["exit_code"] == 70
    assert err["message"] == "RuntimeError: a bug" and "Traceback" in err["traceback"]


def test_exit_codes(job: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    assert main(["--quiet", "run", str(job)]) == 0
    assert main(["--quiet", "run", str(tmp_path / "missing.toml")]) == 2
    write_config(job.parent, formula="sales ~ 1 + (1 | region/shop)")
    assert main(["--quiet", "run", str(job)]) == 3
    write_config(job.parent)
    with output_lock(job.parent / "out"):
        assert main(["--quiet", "run", str(job)]) == 4
    (job.parent / "blocked").write_text("a file where the output folder should be")
    write_config(job.parent, path="blocked/out")
    assert main(["--quiet", "run", str(job)]) == 5
    write_config(job.parent)
    monkeypatch.setattr(Source, "arrow", lambda *a, **k: 1 / 0)
    assert main(["--quiet", "run", "--full", str(job)]) == 70  # --full: scan, nothing new
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 5 and all(e.startswith("pooljob: ") for e in errors)


def test_help_lists_exit_codes() -> None:
    text = build_parser().format_help()
    for code in ("0 ", "2 ", "3 ", "4 ", "5 ", "70 "):
        assert re.search(rf"^  {code}", text, re.M), code
    assert "--log-format {text,json}" in text and "explain" in text


def test_validate_checks_schema_without_scanning(job: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(Source, "arrow", lambda *a, **k: pytest.fail("validate scanned"))
    assert main(["validate", str(job)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "is valid" in out
    write_config(job.parent, formula="sales ~ 1 + (1 | region/shop)")
    assert main(["validate", str(job)]) == 3
    assert "'shop'" in capsys.readouterr().err
    assert not (job.parent / "out").exists()


def _explained(cfg: Path, monkeypatch, capsys) -> str:
    monkeypatch.setattr(Source, "arrow", lambda *a, **k: pytest.fail("explain scanned"))
    assert main(["explain", str(cfg)]) == 0
    monkeypatch.undo()
    return capsys.readouterr().out


def test_explain_prints_views_and_statistics_sql(tmp_path: Path, monkeypatch, capsys) -> None:
    write_rows(tmp_path / "data" / "part-0.parquet")
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[model]", 'where = "store <> 3"\n[model]'))
    sql = _explained(cfg, monkeypatch, capsys)
    data = str(tmp_path / "data" / "*.parquet")
    assert re.search(r"CREATE VIEW source_raw AS SELECT \* FROM parquet_scan\(", sql)
    assert data in sql
    assert 'CREATE TEMP VIEW "source" AS SELECT * FROM source_raw WHERE (store != 3);' in sql
    assert '"region"' in sql and '"store"' in sql and '"sales"' in sql and "{" not in sql
    assert not (tmp_path / "out").exists()
    # what it prints is what runs: DuckDB gives the statistics of the 11 stores left
    views, stats = sql.split("\n\n", 1)
    con = duckdb.connect()
    con.execute(views)
    code = "\n".join(line for line in stats.splitlines() if not line.startswith("--"))
    assert "$" not in code  # no parameter left to bind: it runs as printed
    cursor = con.execute(stats)
    columns = [d[0] for d in cursor.description]
    assert len(cursor.fetchall()) == 11 and "n_rows" in columns


def _run_printed(sql: str, cwd: Path, monkeypatch) -> pl.DataFrame:
    """Every statement of explain's output in a fresh DuckDB connection; the last one's rows."""
    monkeypatch.chdir(cwd)
    con = duckdb.connect()
    statements = duckdb.extract_statements(sql)
    for statement in statements[:-1]:
        con.execute(statement.query)
    table = con.sql(statements[-1].query).to_arrow_table()
    out = pl.from_arrow(table)
    assert isinstance(out, pl.DataFrame)
    return out


@pytest.mark.parametrize("kind", ["path", "query"])
def test_explained_sql_gives_the_statistics_of_the_run(
    tmp_path: Path, monkeypatch, capsys, kind: str
) -> None:
    job = tmp_path / "job"
    write_rows(job / "data" / "part-0.parquet", seed=3)
    write_rows(job / "data" / "part-1.parquet", seed=4)
    cfg = write_config(job, formula="sales ~ 1 + (1 | region/store)")
    source = (
        'path = "data/*.parquet"'
        if kind == "path"
        else "query = \"select *, 'it''s' as note from read_parquet('data/*.parquet')\""
    )
    cfg.write_text(
        cfg.read_text().replace('path = "data/*.parquet"', source + '\nwhere = "sales > 95"')
    )
    sql = _explained(cfg, monkeypatch, capsys)
    assert '-- the result\'s key columns: k0 = "region", k1 = "store"' in sql
    stats = _run_printed(sql, tmp_path, monkeypatch)  # from another folder: paths still resolve
    stats = stats.rename({"k0": "region", "k1": "store"})
    assert main(["--quiet", "run", str(cfg)]) == 0
    capsys.readouterr()
    est = pl.read_parquet(job / "out" / "current" / "estimates.parquet")
    stores = est.filter(pl.col("grouping") == "store:region").select(
        "region", "store", "n", "raw_mean"
    )
    got = stats.select(
        "region", "store", pl.col("n_0").alias("n"), pl.col("mean_0").alias("raw_mean")
    )
    joined = stores.join(got, on=["region", "store"], how="full", coalesce=True)
    assert joined.height == stores.height == got.height
    assert (joined["n"] == joined["n_right"]).all()
    np.testing.assert_allclose(joined["raw_mean"], joined["raw_mean_right"], rtol=1e-12)


def test_explained_count_sql_runs_as_printed(tmp_path: Path, monkeypatch, capsys) -> None:
    cbpp = Path(__file__).parent / "data" / "cbpp.csv"
    cfg = tmp_path / "job.toml"
    cfg.write_text(
        f'[source]\npath = "{cbpp}"\n[model]\n'
        'formula = "cbind(incidence, size - incidence) ~ factor(period) + (1 | herd)"\n'
        'family = "binomial"\n[output]\npath = "out"\n'
    )
    stats = _run_printed(_explained(cfg, monkeypatch, capsys), tmp_path, monkeypatch)
    fit = pooljob.fit(
        "cbind(incidence, size - incidence) ~ factor(period) + (1 | herd)", cbpp, family="binomial"
    )
    assert stats["n_rows"].sum() == fit.rows["read"] and stats["n_used"].sum() == fit.rows["used"]
    assert stats["t_sum"].sum() == pl.read_csv(cbpp)["size"].sum()


def test_explain_database_source(tmp_path: Path, monkeypatch, capsys) -> None:
    db = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(
            "create table sales as select i % 7 as store, random() as sales from range(100) t(i)"
        )
    cfg = tmp_path / "job.toml"
    cfg.write_text(
        '[source]\ndatabase = "warehouse.duckdb"\ntable = "sales"\n'
        '[model]\nformula = "sales ~ 1 + (1 | store)"\n[output]\npath = "out"\n'
    )
    sql = _explained(cfg, monkeypatch, capsys)
    assert f"attach '{db}' as warehouse (read_only);" in sql
    assert "warehouse.sales" in sql or 'warehouse."sales"' in sql


def test_progress_is_tracked_only_if_asked(job: Path) -> None:
    def settings(progress: bool) -> tuple[bool, bool]:
        config = load_config(job)
        with open_config_source(path=config.source.path, progress=progress) as src:
            assert src._con is not None
            (row,) = src._con.execute(
                "select current_setting('enable_progress_bar'), "
                "current_setting('enable_progress_bar_print')"
            ).fetchall()
        return bool(row[0]), bool(row[1])

    assert settings(False) == (False, False)
    assert settings(True) == (True, False)  # tracked for the status line; DuckDB prints nothing


@pytest.mark.parametrize(
    ("tty", "args", "expected"),
    [
        (False, [], "off"),  # cron, a pipe, a file: never a status line
        (True, [], "terminal"),  # stderr on a terminal (stdout may be redirected)
        (True, ["--log-format", "json"], "events"),  # JSON lines stay parseable: events only
        (False, ["--log-format", "json"], "events"),
        (True, ["--quiet"], "off"),
    ],
)
def test_progress_line_only_on_a_terminal_in_text_mode(
    job: Path, monkeypatch, tty: bool, args: list[str], expected: str
) -> None:
    import pooljob.job.run

    seen: list[str] = []
    real_run = pooljob.job.run.run
    monkeypatch.setattr(
        pooljob.job.run,
        "run",
        lambda config, progress=False, **kw: seen.append(progress.mode) or real_run(config, **kw),
    )
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert main([*args, "run", str(job)]) == 0
    assert seen == [expected]


def test_fingerprint_kinds(tmp_path: Path) -> None:
    write_rows(tmp_path / "d" / "a.parquet")
    write_rows(tmp_path / "d" / "b.parquet", seed=1)
    cfg = load_config(write_config(tmp_path)).source
    files = snapshot(type(cfg)(path=str(tmp_path / "d" / "*.parquet")))
    folder = snapshot(type(cfg)(path=str(tmp_path / "d")))
    assert files == folder and len(files.files) == 2
    fp = fingerprint(files)
    assert fp["files"] == 2 and fp["bytes"] == sum(s[1] for s in files.files)
    assert fingerprint(files) == fp  # stable
    query = snapshot(type(cfg)(query="select 1 as y"))
    assert query.kind == "query" and fingerprint(query)["files"] == 0
    other = fingerprint(snapshot(type(cfg)(query="select 2 as y")))
    assert other["sha256"] != fingerprint(query)["sha256"]
    db = tmp_path / "w.duckdb"
    duckdb.connect(str(db)).close()
    database = snapshot(type(cfg)(database=str(db), table="t"))
    assert database.kind == "database" and database.files[0][0] == str(db)
