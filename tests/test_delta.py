"""``[output] format = "delta"``: Delta tables, the ``runs`` protocol, retention, SIGKILL safety.

The tables hold exactly the numbers of ``format = "parquet"`` plus ``run_id``;
reading ``runs`` and opening each table at the version it names gives one
complete run, whatever moment a run was killed at.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from pooljob.job.cli import main
from pooljob.job.lock import LOCK
from pooljob.outputs.delta import RUNS_TABLE, latest_run
from pooljob.outputs.report_data import load_run
from pooljob.outputs.schema import SCHEMA_VERSION
from tests.helpers import write_config, write_rows
from tests.mounts import fill, tmpfs
from tests.test_schema import validate_manifest

deltalake = pytest.importorskip("deltalake")

TABLES = ("estimates", "effects", "coefficients", "components")
GOLDEN = Path(__file__).resolve().parent / "data" / "schemas" / "delta_gaussian.json"


def _job(folder: Path, **output: object) -> Path:
    write_rows(folder / "data" / "part-0.parquet")
    return write_config(folder, **{"format": "delta", **output})


def _read(out: Path, table: str, version: int | None = None) -> pl.DataFrame:
    return pl.read_delta(str(out / table), version=version)


def _consistent(out: Path) -> dict:
    """The latest complete run by the protocol; every table at its version is that run."""
    run = latest_run(out)
    assert set(run["tables"]) == set(TABLES)
    for table, version in run["tables"].items():
        ids = _read(out, table, version)["run_id"].unique().to_list()
        assert ids == [run["run_id"]], (table, version, ids)
    return run


def test_delta_tables_hold_the_parquet_numbers_and_travel_back(tmp_path: Path) -> None:
    cfg = _job(tmp_path)
    assert main(["--quiet", "run", str(cfg)]) == 0
    first = _consistent(tmp_path / "out")
    assert first["sequence"] == 1 and first["schema_version"] == SCHEMA_VERSION
    assert first["manifest"]["format"] == "delta" and first["manifest"]["outputs"] == list(TABLES)
    validate_manifest(first["manifest"])
    out = tmp_path / "out"
    # the same data published as Parquet: the same tables, plus run_id
    write_rows(tmp_path / "p" / "data" / "part-0.parquet")
    assert main(["--quiet", "run", str(write_config(tmp_path / "p"))]) == 0
    for table in TABLES:
        mine = _read(out, table)
        assert mine.columns[-1] == "run_id"
        reference = pl.read_parquet(tmp_path / "p" / "out" / "current" / f"{table}.parquet")
        assert mine.drop("run_id").equals(reference), table
    # exported as a Parquet run folder: the Parquet run's files, Arrow types and all
    import pyarrow.parquet as pq

    from pooljob.outputs.delta import export_run

    (tmp_path / "export").mkdir()
    export_run(out, tmp_path / "export")
    for table in TABLES:
        mine, reference = (
            tmp_path / "export" / f"{table}.parquet",
            tmp_path / "p" / "out" / "current" / f"{table}.parquet",
        )
        assert pq.read_schema(mine).remove_metadata() == pq.read_schema(reference).remove_metadata()
        assert pl.read_parquet(mine).equals(pl.read_parquet(reference)), table
    write_rows(tmp_path / "data" / "part-1.parquet", seed=1)  # an incremental refresh
    assert main(["--quiet", "run", str(cfg)]) == 0
    second = _consistent(out)
    assert second["sequence"] == 2 and second["manifest"]["refresh"]["mode"] == "incremental"
    for table in TABLES:  # pandas, through deltalake
        frame = deltalake.DeltaTable(str(out / table), version=first["tables"][table]).to_pandas()
        assert set(frame["run_id"]) == {first["run_id"]}
    # time travel: the first run is still readable at the versions runs names
    assert _read(out, "estimates", first["tables"]["estimates"])["n"].sum() == 2 * 600
    assert _read(out, "estimates")["n"].sum() == 2 * 1200
    history = deltalake.DeltaTable(str(out / "estimates")).history()
    commits = [h for h in history if h["operation"] == "WRITE"]
    assert [h["pooljob.run_id"] for h in commits] == [second["run_id"], first["run_id"]]
    assert {h["pooljob.schema_version"] for h in commits} == {SCHEMA_VERSION}


def test_the_docs_readers_run_as_written(tmp_path: Path, monkeypatch) -> None:
    """docs/outputs.md's polars and pandas readers of one consistent run."""
    import re

    assert main(["--quiet", "run", str(_job(tmp_path, path="out/income"))]) == 0
    run = latest_run(tmp_path / "out" / "income")
    text = (Path(__file__).resolve().parent.parent / "docs" / "outputs.md").read_text()
    section = text[text.index("## Delta Lake tables") :]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    readers = [b for b in blocks if "read_delta" in b or "to_pandas" in b]
    assert len(readers) == 2
    monkeypatch.chdir(tmp_path)
    for block in readers:
        names: dict[str, object] = {}
        exec(compile(block, "docs/outputs.md", "exec"), names)
        estimates = names["estimates"]
        assert set(estimates["run_id"]) == {run["run_id"]}
        assert len(estimates) == _read(tmp_path / "out" / "income", "estimates").height


def test_keep_runs_vacuums_older_versions(tmp_path: Path) -> None:
    cfg = _job(tmp_path, keep_runs=2)
    out = tmp_path / "out"
    for _ in range(3):
        assert main(["--quiet", "run", "--full", str(cfg)]) == 0
    rows = _read(out, RUNS_TABLE)
    assert rows["sequence"].sort().to_list() == [2, 3]
    oldest = deltalake.DeltaTable(str(out / "estimates")).history()[-1]["version"]
    with pytest.raises(Exception, match=r"(?i)not found|no such file"):
        _read(out, "estimates", oldest)  # its files are gone
    for row in rows.iter_rows(named=True):
        for table, version in json.loads(row["tables"]).items():
            assert _read(out, table, version)["run_id"].unique().to_list() == [row["run_id"]]
    assert len(list((out / "estimates").glob("*.parquet"))) == 2


# The child runs `pooljob run` with a patch; `die()` is SIGKILL.
_CHILD = """
import os, signal, sys
import deltalake

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

orig = deltalake.write_deltalake
calls = []
def write(path, *a, **k):
    calls.append(str(getattr(path, "table_uri", path)).rstrip("/"))  # a table or a path
    {patch}

deltalake.write_deltalake = write
from pooljob.job.cli import main
main(["--quiet", "run", "--full", sys.argv[1]])
"""
_PATCHES = {
    # after two tables are committed at the new run
    "between_tables": "orig(path, *a, **k)\n    if len(calls) == 2:\n        die()",
    # the third table's data file is written, its commit is not: what a kill inside
    # delta-rs's write leaves (an uncommitted part file, a temporary commit file)
    "inside_a_write": (
        "if len(calls) == 3:\n"
        "        import pyarrow.parquet as pq\n"
        "        where = calls[-1].removeprefix('file://')\n"
        "        pq.write_table(a[0], where + '/part-00000-killed-c000.zstd.parquet')\n"
        "        open(where + '/_delta_log/_commit_killed.json.tmp', 'w').write('{')\n"
        "        die()\n"
        "    orig(path, *a, **k)"
    ),
    # every table is committed, `runs` is not
    "before_runs": "if calls[-1].endswith('runs'):\n        die()\n    orig(path, *a, **k)",
}


def test_sigkill_leaves_every_table_readable_and_runs_complete(tmp_path: Path) -> None:
    """Killed at each point in turn, on one output; then a run that completes.

    (benchmarks/soak_delta.py kills runs at random moments, the vacuum's too.)
    """
    cfg = _job(tmp_path, keep_runs=1)
    out = tmp_path / "out"
    assert main(["--quiet", "run", str(cfg)]) == 0
    before = _consistent(out)
    for point, patch in _PATCHES.items():
        code = _CHILD.replace("{patch}", patch)
        res = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True)
        assert res.returncode == -signal.SIGKILL, (point, res.stderr.decode())
        assert (out / LOCK).exists()
        after = _consistent(out)  # the protocol gives a complete run ...
        assert after["run_id"] == before["run_id"], point
        for table in TABLES:  # ... and every table's latest version is a complete table
            assert _read(out, table)["run_id"].n_unique() == 1, (point, table)
        before = after
    assert (out / "coefficients" / "part-00000-killed-c000.zstd.parquet").exists()
    assert main(["--quiet", "run", str(cfg)]) == 0  # the next run takes over and cleans up
    last = _consistent(out)
    assert last["sequence"] == before["sequence"] + 1 and not (out / LOCK).exists()
    for table in TABLES:  # keep_runs = 1: only the files of the last run stay
        assert len(list((out / table).glob("*.parquet"))) == 1, table


def test_a_first_run_killed_early_leaves_no_run_and_the_next_succeeds(tmp_path: Path) -> None:
    cfg = _job(tmp_path)
    out = tmp_path / "out"
    for table in ("estimates", RUNS_TABLE):  # data files written, no table committed yet
        (out / table).mkdir(parents=True)
        pl.DataFrame({"x": [1]}).write_parquet(out / table / "part-00000-killed-c000.parquet")
    with pytest.raises(Exception, match="holds no pooljob Delta run"):
        latest_run(out)
    assert main(["--quiet", "run", str(cfg)]) == 0
    assert _consistent(out)["sequence"] == 1
    assert not list(out.glob("*/part-00000-killed-c000.parquet"))


def test_no_space_is_one_line_exit_5_and_runs_keeps_the_last_run(tmp_path: Path, capsys) -> None:
    cfg = _job(tmp_path)
    with tmpfs(tmp_path / "out", size="400k") as out:
        assert main(["--quiet", "run", str(cfg)]) == 0
        before = _consistent(out)
        filler = fill(out, leave=4096)
        capsys.readouterr()
        assert main(["--quiet", "run", "--full", str(cfg)]) == 5
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "no space left" in err, err
        assert _consistent(out)["run_id"] == before["run_id"]
        filler.unlink()
        assert main(["--quiet", "run", str(cfg)]) == 0
        assert _consistent(out)["sequence"] == 2


def test_config_errors_and_mixed_layouts_are_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    cfg = _job(tmp_path, format="csv")
    assert main(["validate", str(cfg)]) == 2
    assert "[output] format = 'csv' must be one of: parquet, delta" in capsys.readouterr().err
    cfg = _job(tmp_path)
    cfg.write_text(cfg.read_text() + "report = true\n")
    assert main(["validate", str(cfg)]) == 2
    assert 'report = true needs format = "parquet"' in capsys.readouterr().err
    # a Parquet output path is not turned into Delta tables, nor the other way round
    assert main(["--quiet", "run", str(write_config(tmp_path, path="out"))]) == 0
    capsys.readouterr()
    assert main(["--quiet", "run", str(_job(tmp_path))]) == 5
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds Parquet runs" in err, err
    foreign = _job(tmp_path / "f")
    (tmp_path / "f" / "out" / "runs" / "20261130T000000000000Z-1").mkdir(parents=True)
    assert main(["--quiet", "run", str(foreign)]) == 5  # Parquet runs, though no `current`
    assert "holds Parquet runs" in capsys.readouterr().err
    delta = _job(tmp_path / "d")
    assert main(["--quiet", "run", str(delta)]) == 0
    write_rows(tmp_path / "p" / "data" / "part-0.parquet")
    (tmp_path / "p" / "job.toml").write_text(
        write_config(tmp_path / "p", path="../d/out").read_text()
    )
    assert main(["--quiet", "run", str(tmp_path / "p" / "job.toml")]) == 5
    assert "holds Delta tables" in capsys.readouterr().err
    # without the extra: how to install it, before any scan
    monkeypatch.setitem(sys.modules, "deltalake", None)
    assert main(["--quiet", "run", str(delta)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'pooljob[delta]'" in err, err
    assert main(["validate", str(delta)]) == 2
    assert "pip install 'pooljob[delta]'" in capsys.readouterr().err
    monkeypatch.undo()
    assert len(_read(tmp_path / "d" / "out", RUNS_TABLE)) == 1
    # pooljob report reads the latest complete run of a Delta output (its Parquet export)
    import pooljob.outputs.report as report_module

    def fake_report(run_dir: str, grouping: object, output: Path) -> Path:
        assert load_run(run_dir).manifest["run_id"] == latest_run(tmp_path / "d" / "out")["run_id"]
        output.write_text("report")
        return output

    monkeypatch.setattr(report_module, "write_report", fake_report)
    report = tmp_path / "r.html"
    assert main(["--quiet", "report", str(tmp_path / "d" / "out"), "--output", str(report)]) == 0
    assert report.read_text() == "report"


def test_a_key_column_named_run_id_is_published_as_run_id_key(tmp_path: Path) -> None:
    from pooljob.outputs.frames import published_names

    assert published_names(["Run_ID", "store"]) == {"Run_ID": "Run_ID_key", "store": "store"}
    write_rows(tmp_path / "data" / "part-0.parquet")
    rows = pl.read_parquet(tmp_path / "data" / "part-0.parquet")
    rows.rename({"store": "run_id"}).write_parquet(tmp_path / "data" / "part-0.parquet")
    cfg = write_config(tmp_path, "sales ~ 1 + (1 | run_id)", format="delta")
    assert main(["--quiet", "run", str(cfg)]) == 0
    estimates = _read(tmp_path / "out", "estimates")
    assert "run_id_key" in estimates.columns
    assert estimates["run_id"].unique().to_list() == [latest_run(tmp_path / "out")["run_id"]]


def delta_schema(out: Path) -> dict:
    """Each Delta table's columns (Delta types) and the fields of its commit info."""
    tables = {}
    for table in (*TABLES, "poststratified", "predictions", RUNS_TABLE):
        if (out / table).is_dir():
            schema = deltalake.DeltaTable(str(out / table)).schema()
            tables[table] = [f"{f.name}: {f.type.type}" for f in schema.fields]
    commit = deltalake.DeltaTable(str(out / "estimates")).history(1)[0]
    return {
        "schema_version": SCHEMA_VERSION,
        "tables": tables,
        "commit_info": sorted(k for k in commit if k.startswith("pooljob.")),
    }


def test_delta_schema_matches_the_golden_file(tmp_path: Path) -> None:
    """With [poststratify] and [predict]: every table a run can publish."""
    cfg = _job(tmp_path)
    cells = pl.DataFrame({"region": ["east", "west", "west"], "store": [0, 1, 99]})
    cells.with_columns(population=pl.lit(10)).write_parquet(tmp_path / "population.parquet")
    cells.write_parquet(tmp_path / "cells.parquet")
    cfg.write_text(
        cfg.read_text()
        + '[poststratify]\npath = "population.parquet"\nweight = "population"\nby = ["region"]\n'
        + '[predict]\npath = "cells.parquet"\n'
    )
    assert main(["--quiet", "run", str(cfg)]) == 0
    found = delta_schema(tmp_path / "out")
    run = latest_run(tmp_path / "out")
    assert set(run["tables"]) == {*TABLES, "poststratified", "predictions"}
    for table, version in run["tables"].items():
        assert _read(tmp_path / "out", table, version)["run_id"].unique().to_list() == [
            run["run_id"]
        ]
    if os.environ.get("POOLJOB_UPDATE_SCHEMAS") == "1":
        GOLDEN.write_text(json.dumps(found, indent=2) + "\n")
    assert found == json.loads(GOLDEN.read_text()), "the Delta schema changed: bump SCHEMA_VERSION"
