from __future__ import annotations

from pathlib import Path

import pytest

import pooljob
from pooljob.errors import ConfigError
from pooljob.job.config import load_config, parse_config

GOOD = {
    "source": {"path": "data/*.parquet", "where": "year = 2024"},
    "model": {"formula": "income ~ 1 + (1 | state/county/zip)", "method": "ml"},
    "output": {"path": "out/income", "interval": 0.9, "keep_runs": 3},
}


def test_good_config_is_frozen_and_resolved(tmp_path: Path) -> None:
    cfg = parse_config(GOOD, tmp_path / "job.toml")
    assert cfg.source.path == str(tmp_path / "data" / "*.parquet")
    assert cfg.output.path == tmp_path / "out" / "income"
    assert cfg.model.method == "ml"
    assert cfg.model.family == "gaussian"
    assert cfg.output.interval == 0.9
    assert [g.name for g in cfg.model.formula.groupings][-1] == "zip:(county:state)"
    with pytest.raises(AttributeError):
        cfg.output = None  # type: ignore[misc]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    raw = {
        "source": {"path": "a.parquet", "query": "select 1", "colour": "red"},
        "model": {"formula": "y ~ log(x) + (1 | g)", "family": "gamma", "method": "bayes"},
        "output": {"path": "out", "interval": 1.5, "keep_runs": 0},
        "extra": {},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, tmp_path / "c.toml")
    msg = str(info.value)
    assert "\n" not in msg
    for part in (
        "unknown section [extra]",
        "unknown key [source] colour",
        "exactly one of path, database (with table) or query; got path, query",
        "term 'log(x)'",
        "family = 'gamma'",
        "method = 'bayes'",
        "interval = 1.5",
        "keep_runs = 0",
    ):
        assert part in msg, part


def test_types_and_missing_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"source": {"path": 3}, "output": {"keep_runs": "5"}}, tmp_path / "c.toml")
    msg = str(info.value)
    assert "[source] path = 3 must be a string" in msg
    assert "[output] keep_runs = '5' must be an integer" in msg
    assert "missing section [model]" in msg
    assert "missing [output] path" in msg


def test_database_needs_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="database needs a table"):
        parse_config({**GOOD, "source": {"database": "w.duckdb"}}, tmp_path / "c.toml")


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[source\npath = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_demo_config_is_valid() -> None:
    cfg = load_config(Path(__file__).parent.parent / "configs" / "demo.toml")
    assert cfg.model.formula.key_columns == ("state", "county", "zip")


def test_option_values_are_case_insensitive(tmp_path: Path) -> None:
    raw = {
        "source": {"path": "data/*.parquet"},
        "model": {"formula": "y ~ 1 + (1 | g)", "family": "Gaussian", "method": "REML"},
        "output": {"path": "out"},
        "engine": {"kind": "DuckDB"},
    }
    cfg = parse_config(raw, tmp_path / "job.toml")
    assert (cfg.model.family, cfg.model.method, cfg.engine.kind) == ("gaussian", "reml", "duckdb")
    raw["model"] = {"formula": "y ~ 1 + (1 | g)", "family": "BINOMIAL"}
    cfg = parse_config(raw, tmp_path / "job.toml")
    assert (cfg.model.family, cfg.model.method) == ("binomial", "laplace")
    raw["model"] = {"formula": "y ~ 1 + (1 | g)", "method": "REMl2"}
    with pytest.raises(ConfigError, match="method = 'REMl2' is not supported"):
        parse_config(raw, tmp_path / "job.toml")


def test_api_options_are_case_insensitive() -> None:
    data = str(Path(__file__).parent / "data" / "Dyestuff.csv")
    options: dict = {"family": "Gaussian", "method": "REML"}
    upper = pooljob.fit("Yield ~ 1 + (1 | Batch)", data, **options)
    lower = pooljob.fit("Yield ~ 1 + (1 | Batch)", data, method="reml")
    assert upper.method == "reml" and upper.family == "gaussian"
    assert upper.objective == lower.objective
