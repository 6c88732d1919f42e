"""The versioned output schema: golden schemas, Parquet metadata, the manifest's JSON Schema.

Three runs (the demo's gaussian nested model, a gaussian blocked model with a
covariate and a key column that clashes with a table column, the poll demo's
binomial model with poststratification) are published, and their tables'
Arrow schemas and the manifest's fields compared with ``tests/data/schemas/``.
A difference fails: bump ``SCHEMA_VERSION`` (pooljob/outputs/schema.py),
update the golden files (``POOLJOB_UPDATE_SCHEMAS=1`` with this test) and
record the change in CHANGELOG.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from pooljob.errors import InputError
from pooljob.job.cli import main
from pooljob.job.config import load_config
from pooljob.job.demo import write_demo_data, write_poll_data
from pooljob.job.run import run
from pooljob.outputs.report_data import load_run
from pooljob.outputs.schema import RUN_ID_KEY, SCHEMA_VERSION, TABLE_KEY, VERSION_KEY

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "schemas"
MANIFEST_SCHEMA = ROOT / "docs" / "manifest.schema.json"
UPDATE = os.environ.get("POOLJOB_UPDATE_SCHEMAS") == "1"
BUMP = (
    "the published schema changed: bump SCHEMA_VERSION in pooljob/outputs/schema.py, "
    "update the golden files (POOLJOB_UPDATE_SCHEMAS=1 pytest tests/test_schema.py) "
    "and record the change in CHANGELOG.md"
)

# ---------------------------------------------------------------------------
# A validator for the subset of JSON Schema (draft 2020-12) the manifest's uses.

_KEYWORDS = {
    "$schema",
    "$id",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minimum",
    "maximum",
    "pattern",
    "anyOf",
}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def schema_errors(value: Any, schema: Any, root: Any, where: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (empty if none)."""
    if schema is True:
        return []
    if schema is False:
        return [f"{where}: not allowed"]
    unknown = set(schema) - _KEYWORDS
    assert not unknown, f"the validator does not know {sorted(unknown)} (at {where})"
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, where)
    if "anyOf" in schema:
        tries = [schema_errors(value, s, root, where) for s in schema["anyOf"]]
        if all(tries):
            return [f"{where}: matches no alternative ({'; '.join(t[0] for t in tries)})"]
    errors: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            return [f"{where}: {value!r} is not of type {'/'.join(types)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} is not {schema['const']!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} > {schema['maximum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], root, f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [
            f"{where}: {k!r} is missing" for k in schema.get("required", []) if k not in value
        ]
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            sub = props.get(k, extra)
            errors += schema_errors(v, sub, root, f"{where}.{k}")
    return errors


def validate_manifest(manifest: dict[str, Any]) -> None:
    schema = json.loads(MANIFEST_SCHEMA.read_text())
    errors = schema_errors(manifest, schema, schema)
    assert not errors, "manifest.json breaks docs/manifest.schema.json:\n" + "\n".join(errors)


def test_the_validator_catches_what_it_should() -> None:
    schema = {
        "type": "object",
        "required": ["a"],
        "additionalProperties": False,
        "properties": {
            "a": {"type": "integer", "minimum": 0},
            "b": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/s"}]},
        },
        "$defs": {"s": {"type": "string", "pattern": "^x"}},
    }
    assert not schema_errors({"a": 1, "b": None}, schema, schema)
    assert not schema_errors({"a": 1, "b": "xy"}, schema, schema)
    assert schema_errors({"a": True}, schema, schema)  # a boolean is no integer
    assert schema_errors({"a": -1}, schema, schema)
    assert schema_errors({"a": 1, "b": "y"}, schema, schema)
    assert schema_errors({"a": 1, "c": 0}, schema, schema)
    assert schema_errors({}, schema, schema)


# ---------------------------------------------------------------------------
# The runs.


def _demo_run(folder: Path, config: str, write: Any, data: str) -> Path:
    """Run a shipped demo config as it is, on its data written under ``folder``."""
    (folder / "configs").mkdir(parents=True)
    shutil.copy(ROOT / "configs" / config, folder / "configs" / config)
    write(folder / "demo" / data)
    return run(load_config(folder / "configs" / config)).run_dir


def _blocked_run(folder: Path) -> Path:
    """A gaussian model the blocked solver fits: a covariate, crossed groupings.

    The grouping column ``level`` clashes with effects' ``level``: published as ``level_key``.
    """
    rng = np.random.default_rng(3)
    n = 600
    store, level = rng.integers(0, 12, n), rng.integers(0, 5, n)
    x = rng.normal(size=n)
    y = 10 + 2 * x + rng.normal(0, 2, 12)[store] + rng.normal(0, 1, 5)[level] + rng.normal(size=n)
    folder.mkdir(parents=True)
    pl.DataFrame({"store": store, "level": level, "x": x, "sales": y}).write_parquet(
        folder / "rows.parquet"
    )
    (folder / "job.toml").write_text(
        '[source]\npath = "rows.parquet"\n'
        '[model]\nformula = "sales ~ x + (1 | store) + (1 | level)"\n'
        '[output]\npath = "out"\n'
    )
    outcome = run(load_config(folder / "job.toml"))
    assert not outcome.result.nested
    return outcome.run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("schema")
    return {
        "gaussian_nested": _demo_run(base / "demo", "demo.toml", write_demo_data, "data"),
        "gaussian_blocked": _blocked_run(base / "blocked"),
        "binomial_poststratified": _demo_run(base / "poll", "poll.toml", write_poll_data, "poll"),
    }


def published_schema(run_dir: Path) -> dict[str, Any]:
    """The run's tables (Arrow columns) and the manifest's fields, as the golden files hold them."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    tables = {}
    for name in manifest["outputs"]:
        if name.endswith(".parquet"):
            schema = pq.read_schema(run_dir / name)
            tables[name.removesuffix(".parquet")] = [
                f"{f.name}: {f.type}{'' if f.nullable else ' not null'}" for f in schema
            ]
    fields: dict[str, list[str]] = {"": sorted(manifest)}
    for key in ("optimizer", "rows", "input_fingerprint", "refresh"):
        fields[key] = sorted(manifest[key])
    fields["rows.dropped"] = sorted(manifest["rows"]["dropped"])
    fields["components[]"] = sorted({k for row in manifest["components"] for k in row})
    fields["coefficients[]"] = sorted({k for row in manifest["coefficients"] for k in row})
    return {
        "schema_version": manifest["schema_version"],
        "tables": tables,
        "key_columns": manifest["key_columns"],
        "manifest_fields": fields,
    }


@pytest.mark.parametrize("name", ["gaussian_nested", "gaussian_blocked", "binomial_poststratified"])
def test_published_schema_matches_the_golden_file(runs: dict[str, Path], name: str) -> None:
    found = published_schema(runs[name])
    golden = GOLDEN / f"{name}.json"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps(found, indent=2) + "\n")
    expected = json.loads(golden.read_text())
    assert found == expected, f"{name}: {BUMP}"


def test_the_golden_files_name_this_schema_version() -> None:
    for golden in sorted(GOLDEN.glob("*.json")):
        assert json.loads(golden.read_text())["schema_version"] == SCHEMA_VERSION, (
            f"{golden.name}: {BUMP}"
        )


def test_every_parquet_file_carries_the_metadata(runs: dict[str, Path]) -> None:
    for run_dir in runs.values():
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["schema_version"] == SCHEMA_VERSION
        files = sorted(run_dir.glob("*.parquet"))
        assert {f.name for f in files} == {o for o in manifest["outputs"] if o.endswith("parquet")}
        for file in files:
            meta = pq.read_schema(file).metadata
            assert meta is not None, file
            assert meta[VERSION_KEY.encode()].decode() == SCHEMA_VERSION, file
            assert meta[RUN_ID_KEY.encode()].decode() == manifest["run_id"], file
            assert meta[TABLE_KEY.encode()].decode() == file.stem, file
            assert b"ARROW:schema" in (pq.read_metadata(file).metadata or {})  # pyarrow's own
            column = pq.read_metadata(file).row_group(0).column(0)
            assert column.compression == "ZSTD" and column.statistics is not None
        assert pl.read_parquet(run_dir / "estimates.parquet").height > 0


def test_the_manifests_follow_the_json_schema(runs: dict[str, Path], tmp_path: Path) -> None:
    for run_dir in runs.values():
        validate_manifest(json.loads((run_dir / "manifest.json").read_text()))
    # and a query source (no files, no store) with every option that changes the manifest
    frame = pl.DataFrame({"g": ["a", "b", "c", "d"] * 10, "y": np.arange(40.0) % 7})
    frame.write_parquet(tmp_path / "rows.parquet")
    (tmp_path / "job.toml").write_text(
        "[source]\nquery = \"select * from 'rows.parquet'\"\n"
        '[model]\nformula = "y ~ 1 + (1 | g)"\nmethod = "ml"\n'
        '[output]\npath = "out"\ninterval = 0.9\n'
    )
    validate_manifest(run(load_config(tmp_path / "job.toml")).manifest)
    # and an incremental refresh (no reason)
    (tmp_path / "data").mkdir()
    frame.write_parquet(tmp_path / "data" / "a.parquet")
    (tmp_path / "refresh.toml").write_text(
        '[source]\npath = "data/*.parquet"\n'
        '[model]\nformula = "y ~ 1 + (1 | g)"\n'
        '[output]\npath = "out2"\n'
    )
    validate_manifest(run(load_config(tmp_path / "refresh.toml")).manifest)
    frame.with_columns(y=pl.col("y") * 2).write_parquet(tmp_path / "data" / "b.parquet")
    manifest = run(load_config(tmp_path / "refresh.toml")).manifest
    assert manifest["refresh"]["mode"] == "incremental"
    validate_manifest(manifest)


def test_a_manifest_breaking_the_schema_is_caught(runs: dict[str, Path]) -> None:
    manifest = json.loads((runs["gaussian_blocked"] / "manifest.json").read_text())
    manifest["surprise"] = 1
    manifest["optimizer"]["evaluations"] = "many"
    with pytest.raises(AssertionError, match=r"surprise.*\n.*evaluations"):
        validate_manifest(manifest)


# ---------------------------------------------------------------------------
# Reading runs of other versions.


def _with_version(run_dir: Path, folder: Path, version: Any) -> Path:
    copy = folder / "run"
    shutil.copytree(run_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    if version is None:
        del manifest["schema_version"]
    else:
        manifest["schema_version"] = version
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("version", [None, "1", "1.3", "0"])
def test_report_reads_older_and_same_major_runs(
    runs: dict[str, Path], tmp_path: Path, version: Any
) -> None:
    run_dir = _with_version(runs["gaussian_blocked"], tmp_path, version)
    assert load_run(run_dir).groupings


@pytest.mark.parametrize("version", ["2", "2.0", 3, "x"])
def test_report_refuses_a_newer_major_version(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], version: Any
) -> None:
    run_dir = _with_version(runs["gaussian_blocked"], tmp_path, version)
    with pytest.raises(InputError, match="schema"):
        load_run(run_dir)
    assert main(["report", str(run_dir), "--output", str(tmp_path / "r.html")]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "schema" in err, err
    assert not (tmp_path / "r.html").exists()
