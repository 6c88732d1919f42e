"""Every kind of source, and identifiers that need quoting."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.errors import InputError
from pooljob.job.config import parse_config
from pooljob.job.run import run
from pooljob.scan.source import open_config_source, quote_identifier
from tests.helpers import write_rows

FORMULA = "sales ~ 1 + (1 | region/store)"


def _config(tmp_path: Path, source: dict, formula: str = FORMULA):
    return parse_config(
        {"source": source, "model": {"formula": formula}, "output": {"path": "out"}},
        tmp_path / "job.toml",
    )


@pytest.fixture
def rows(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(write_rows(tmp_path / "data" / "rows.parquet"))


def _components(result: pooljob.FitResult) -> np.ndarray:
    return result.components["variance"].to_numpy()


def test_database_table_query_and_files_agree(tmp_path: Path, rows: pl.DataFrame) -> None:
    db = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(db))
    con.register("rows_df", rows.to_arrow())
    con.execute("create table sales as select * from rows_df")
    con.close()
    rows.write_csv(tmp_path / "data" / "rows.csv")
    outcomes = [
        run(_config(tmp_path, {"path": "data/rows.parquet"})),
        run(_config(tmp_path, {"path": "data/rows.csv"})),
        run(_config(tmp_path, {"database": "warehouse.duckdb", "table": "sales"})),
        run(
            _config(tmp_path, {"query": f"select * from read_parquet('{tmp_path}/data/*.parquet')"})
        ),
    ]
    for o in outcomes[1:]:
        np.testing.assert_allclose(
            _components(o.result), _components(outcomes[0].result), rtol=1e-8
        )


def test_where_filter_is_applied(tmp_path: Path, rows: pl.DataFrame) -> None:
    o = run(_config(tmp_path, {"path": "data/rows.parquet", "where": "store < 6"}))
    assert o.result.rows["read"] == rows.filter(pl.col("store") < 6).height


def test_bad_where_is_one_line(tmp_path: Path, rows: pl.DataFrame) -> None:
    with pytest.raises(InputError, match=r"where = 'nosuchcol > 1' is not a valid filter"):
        run(_config(tmp_path, {"path": "data/rows.parquet", "where": "nosuchcol > 1"}))


def test_missing_table_lists_tables(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    duckdb.connect(str(db)).execute("create table facts as select 1 as a").close()
    with pytest.raises(InputError, match=r"table 'sales' is not in .*tables there: facts"):
        run(_config(tmp_path, {"database": "w.duckdb", "table": "sales"}))


def test_missing_database(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"database .* does not exist"):
        run(_config(tmp_path, {"database": "nope.duckdb", "table": "sales"}))


def test_identifiers_that_need_quoting(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    g = rng.integers(0, 10, 300)
    df = pl.DataFrame(
        {
            "select": np.where(g < 5, "a", "b"),
            'zip "code"': g,
            "net income": 10 + rng.normal(0, 1, 10)[g] + rng.normal(0, 1, 300),
        }
    )
    fit = pooljob.fit(r'`net income` ~ 1 + (1 | `select`/`zip "code"`)', df)
    assert fit.estimates.columns[:3] == ["grouping", "select", 'zip "code"']
    plain = pooljob.fit(
        "y ~ 1 + (1 | a/b)", df.rename({"select": "a", 'zip "code"': "b", "net income": "y"})
    )
    np.testing.assert_allclose(_components(fit), _components(plain), rtol=1e-10)


def test_quote_identifier_doubles_quotes() -> None:
    assert quote_identifier('a"b') == '"a""b"'
    with open_config_source(query='select 1 as "x""; drop table t; --"') as src:
        assert list(src.columns) == ['x"; drop table t; --']
