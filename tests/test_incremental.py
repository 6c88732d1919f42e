"""Incremental refresh: after any sequence of refreshes the fit equals a full scan.

The store keeps per-file cell moments under ``<output>/state``; a refresh
scans only the new and changed files (checked by spying on the per-file
scan), merges, and refits.  Compared with a one-pass scan of all files
(``[output] incremental = false``) and with ``pooljob run --full``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from pooljob.errors import InputError, PublishError
from pooljob.job import refresh as refresh_module
from pooljob.job.cli import main
from pooljob.job.config import load_config
from pooljob.job.fingerprint import snapshot
from pooljob.job.run import RunOutcome, run
from pooljob.model.cells import CellTable, CountTable
from pooljob.scan.cell_counts import scan_counts
from pooljob.scan.cell_moments import scan_cells
from pooljob.scan.merge import merge_moments
from pooljob.scan.schema import check_schema
from pooljob.scan.source import open_config_source
from pooljob.scan.store import RECORD, STATE
from tests.helpers import tree_digest

NESTED = "sales ~ 1 + (1 | region/store)"
GENERAL = "y ~ x + (1 | g) + (1 | h)"
_STORE_EFFECTS = np.random.default_rng(100).normal(0, 5, 12)
_G = np.random.default_rng(101).normal(0, 2, 8)
_H = np.random.default_rng(102).normal(0, 1, 6)


def _nested_rows(path: Path, seed: int, n: int = 200, offset: float = 0.0) -> None:
    rng = np.random.default_rng(seed)
    store = rng.integers(0, 12, n)
    region = np.array(["east", "west", "north"])[store % 3]
    sales = offset + 100 + _STORE_EFFECTS[store] + rng.normal(0, 10, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"region": region, "store": store, "sales": sales}).write_parquet(path)


def _general_rows(path: Path, seed: int, n: int = 200, offset: float = 0.0) -> None:
    """Crossed g and h; one null key and one NaN response per file, to be dropped and counted."""
    rng = np.random.default_rng(seed)
    g, h, x = rng.integers(0, 8, n), rng.integers(0, 6, n), rng.normal(0, 1, n)
    y = offset + 5 + 2 * x + _G[g] + _H[h] + rng.normal(0, 1, n)
    y[1] = np.nan
    keys: list[str | None] = [f"g{v}" for v in g]
    keys[0] = None
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        {"g": keys, "h": h, "x": x, "y": y},
        schema={"g": pl.String, "h": pl.Int64, "x": pl.Float64, "y": pl.Float64},
    )
    frame.write_parquet(path)


CBIND = "cbind(succ, trials - succ) ~ period + herd_size + (1 | herd)"
BINARY = "vote ~ urban + herd_size + (1 | herd) + (1 | period)"
POISSON = "claims ~ period + offset(log(exposure)) + (1 | herd)"
FAMILIES = {CBIND: "binomial", BINARY: "binomial", POISSON: "poisson"}
_HERD = np.random.default_rng(103).normal(0, 0.7, 8)
_HERD_SIZE = np.round(np.random.default_rng(104).uniform(1, 9, 8), 3)  # constant per herd


def _count_rows(path: Path, seed: int, n: int = 200, offset: float = 0.0) -> None:
    """Binomial (counts, 0/1) and Poisson columns; a null key and a null response per file."""
    rng = np.random.default_rng(seed)
    herd, period = rng.integers(0, 8, n), rng.integers(1, 4, n)
    urban = rng.random(n) < 0.4
    eta = offset - 0.5 + 0.2 * period + np.where(urban, 0.4, 0.0) + _HERD[herd]
    trials = rng.integers(1, 30, n)
    exposure = rng.uniform(0.5, 20.0, n)
    keys: list[str | None] = [f"h{v}" for v in herd]
    keys[0] = None
    claims: list[int | None] = list(rng.poisson(exposure * np.exp(eta - 1.5)))
    claims[1] = None
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "herd": keys,
            "period": [f"p{v}" for v in period],
            "herd_size": _HERD_SIZE[herd],
            "urban": urban,
            "trials": trials,
            "succ": rng.binomial(trials, 1 / (1 + np.exp(-eta))),
            "vote": rng.random(n) < 1 / (1 + np.exp(-eta)),
            "exposure": exposure,
            "claims": claims,
        },
        schema_overrides={"herd": pl.String, "claims": pl.Int64},
    ).write_parquet(path)


WRITERS: dict[str, Callable[..., None]] = {
    NESTED: _nested_rows,
    GENERAL: _general_rows,
    **dict.fromkeys(FAMILIES, _count_rows),
}


def _config(folder: Path, formula: str, out: str = "out", **output: Any) -> Path:
    values = {"path": out, "keep_runs": 2, **output}
    lines = [
        "[source]",
        'path = "data/**/*.parquet"',
        "[model]",
        f'formula = "{formula}"',
        *([f'family = "{FAMILIES[formula]}"'] if formula in FAMILIES else []),
        "[output]",
        *[f"{k} = {json.dumps(v)}" for k, v in values.items()],
    ]
    cfg = folder / f"{out}.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _part(folder: Path, day: int) -> Path:
    return folder / "data" / f"day={day}" / "part.parquet"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`main` points pooljob's log at capsys's stream; put the handlers back after each test."""
    logger = logging.getLogger("pooljob")
    handlers, level = logger.handlers[:], logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.fixture
def scanned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The file lists the per-file scan opens, one list per scan."""
    calls: list[list[str]] = []
    real = refresh_module.open_file_list

    def spy(files: list[str], **kwargs: Any) -> Any:
        calls.append(sorted(files))
        return real(files, **kwargs)

    monkeypatch.setattr(refresh_module, "open_file_list", spy)
    return calls


def _key_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c, t in frame.schema.items() if not t.is_float()]


def assert_same_fit(
    a: RunOutcome, b: RunOutcome, rtol: float = 1e-10, loose: frozenset[str] = frozenset()
) -> None:
    """Every table equal: keys exactly, numbers to ``rtol`` relative to their column's scale.

    The columns ``loose`` (``table.column``) to 1e-7.
    """
    for name in ("estimates", "effects", "coefficients", "components"):
        x, y = getattr(a.result, name), getattr(b.result, name)
        assert x.columns == y.columns and x.height == y.height, name
        keys = _key_columns(x)
        x, y = x.sort(keys, nulls_last=True), y.sort(keys, nulls_last=True)
        assert x.select(keys).equals(y.select(keys)), name
        for c in x.columns:
            if c in keys:
                continue
            u, v = x[c].to_numpy(), y[c].to_numpy()
            scale = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
            tol = 1e-7 if f"{name}.{c}" in loose else rtol
            np.testing.assert_allclose(u, v, rtol=tol, atol=tol * scale, err_msg=f"{name}.{c}")
    assert a.result.objective == pytest.approx(b.result.objective, rel=rtol)
    assert a.result.loglik == pytest.approx(b.result.loglik, rel=rtol)
    assert a.result.rows == b.result.rows


def assert_same_counts(cfg: Path) -> None:
    """The counts merged from the store equal those of a one-pass count scan of every file."""
    config = load_config(cfg)
    family = config.model.family
    with open_config_source(path=config.source.path) as source:
        spec = check_schema(source, config.model.formula, family)
        one_pass = scan_counts(source, config.model.formula, family, spec)
        merged, refresh = refresh_module.refresh_cells(
            config, source, spec, snapshot(config.source)
        )
    assert refresh.mode == "incremental" and refresh.scanned == 0
    assert isinstance(merged, CountTable)
    assert merged.keys.equals(one_pass.keys) and merged.rows == one_pass.rows
    for name in ("n", "y", "values", "offset"):  # whole numbers, and extremes: exact
        assert np.array_equal(getattr(merged, name), getattr(one_pass, name)), name
    np.testing.assert_allclose(merged.t, one_pass.t, rtol=1e-14)  # sums of exp(offset)
    assert merged.constant == pytest.approx(one_pass.constant, rel=1e-13)


def assert_same_statistics(cfg: Path) -> None:
    """The cells merged from the store equal those of a one-pass scan of every file."""
    config = load_config(cfg)
    if config.model.family != "gaussian":
        assert_same_counts(cfg)
        return
    with open_config_source(path=config.source.path) as source:
        spec = check_schema(source, config.model.formula)
        one_pass = scan_cells(source, spec.keys, spec.variables)
        merged, refresh = refresh_module.refresh_cells(
            config, source, spec, snapshot(config.source)
        )
    assert refresh.mode == "incremental" and refresh.scanned == 0
    assert isinstance(merged, CellTable)
    keys = list(spec.keys)
    a = one_pass.keys.with_row_index("a").join(merged.keys.with_row_index("b"), on=keys)
    assert a.height == one_pass.keys.height == merged.keys.height
    i, j = a["a"].to_numpy(), a["b"].to_numpy()
    assert np.array_equal(one_pass.n[i], merged.n[j]) and one_pass.rows == merged.rows
    shift = merged.shifts - one_pass.shifts
    np.testing.assert_allclose(merged.mean[j] + shift, one_pass.mean[i], rtol=1e-13, atol=1e-13)
    scale = np.abs(one_pass.comoment).max()
    np.testing.assert_allclose(merged.comoment[j], one_pass.comoment[i], atol=1e-13 * scale)


def _references(folder: Path, formula: str) -> tuple[RunOutcome, RunOutcome]:
    """A one-pass scan of every file (no store) and a `--full` rebuild, in outputs of their own."""
    plain = run(load_config(_config(folder, formula, "plain", incremental=False)))
    full = run(load_config(_config(folder, formula, "rebuilt")), full=True)
    return plain, full


@pytest.mark.parametrize("formula", [NESTED, GENERAL, CBIND, BINARY, POISSON])
def test_refreshes_equal_a_full_scan(
    tmp_path: Path, formula: str, scanned: list[list[str]]
) -> None:
    write = WRITERS[formula]
    for day in range(3):
        write(_part(tmp_path, day), seed=day)
    cfg = _config(tmp_path, formula)
    first = run(load_config(cfg))
    assert first.manifest["refresh"]["mode"] == "full"
    assert "no statistics store" in first.manifest["refresh"]["reason"]

    def append(day: int) -> None:
        write(_part(tmp_path, day), seed=day)

    def change(day: int) -> None:
        write(_part(tmp_path, day), seed=50 + day, n=150)

    def delete(day: int) -> None:
        shutil.rmtree(_part(tmp_path, day).parent)

    steps: list[tuple[str, list[Callable[[], None]], list[int], int]] = [
        # what happens, to which partitions, the partitions scanned, files removed from the store
        ("append", [lambda: append(3)], [3], 0),
        ("change", [lambda: change(1)], [1], 1),
        ("delete", [lambda: delete(0)], [], 1),
        ("append+delete", [lambda: append(4), lambda: delete(2)], [4], 1),
        ("nothing", [], [], 0),
    ]
    for label, actions, scan_days, removed in steps:
        for action in actions:
            action()
        scanned.clear()
        outcome = run(load_config(cfg))
        refresh = outcome.manifest["refresh"]
        assert refresh["mode"] == "incremental", (label, refresh)
        expected_scan = sorted(str(_part(tmp_path, d)) for d in scan_days)
        assert scanned == ([expected_scan] if scan_days else []), label
        assert refresh["files_scanned"] == len(scan_days), label
        assert refresh["files_removed"] == removed, label
        assert refresh["files_reused"] == outcome.manifest["input_fingerprint"]["files"] - len(
            scan_days
        )
        plain, full = _references(tmp_path, formula)
        assert plain.manifest["refresh"]["mode"] == "full"
        assert full.manifest["refresh"]["reason"] == "pooljob run --full"
        assert_same_fit(outcome, full)
        # The merged statistics equal a one-pass scan's to rounding (~1e-16); the general
        # solver (L-BFGS-B on the exact gradient, then Newton steps) moves by ~1e-10 for a
        # change of 1e-15 in its input, so its fits are compared at its own precision.
        assert_same_statistics(cfg)
        if formula in FAMILIES:
            # Counts merge exactly; a Poisson exposure (a sum of exp(offset)) to rounding,
            # which the coefficients' standard errors (from a Hessian by differences of the
            # gradient) turn into ~1e-9: those to 1e-7, every estimate and loglik to 1e-10.
            loose = frozenset({"coefficients.std_error"} if formula == POISSON else ())
            assert_same_fit(outcome, plain, rtol=1e-10, loose=loose)
        else:
            assert_same_fit(outcome, plain, rtol=1e-10 if formula == NESTED else 1e-8)
    if formula in FAMILIES:  # each file holds one null key and one null count (Poisson)
        files = outcome.manifest["input_fingerprint"]["files"]
        dropped = outcome.result.rows["dropped"]
        assert dropped["null_group_key"] == files
        assert dropped["null_response"] == (files if formula == POISSON else 0)
    if formula == GENERAL:  # each file holds one null key and one NaN response
        files = outcome.manifest["input_fingerprint"]["files"]
        dropped = outcome.result.rows["dropped"]
        assert dropped["null_group_key"] == files and dropped["nonfinite_response"] == files


def test_full_flag_rebuilds_the_store(tmp_path: Path, scanned: list[list[str]], capsys) -> None:
    for day in range(3):
        _nested_rows(_part(tmp_path, day), seed=day)
    cfg = _config(tmp_path, NESTED)
    assert main(["--quiet", "run", str(cfg)]) == 0
    record_before = json.loads((tmp_path / "out" / STATE / RECORD).read_text())
    scanned.clear()
    assert main(["--quiet", "run", "--full", str(cfg)]) == 0
    assert scanned == [sorted(str(_part(tmp_path, d)) for d in range(3))]
    manifest = json.loads((tmp_path / "out" / "current" / "manifest.json").read_text())
    assert manifest["refresh"] == {
        "mode": "full",
        "files_scanned": 3,
        "files_reused": 0,
        "files_removed": 0,
        "reason": "pooljob run --full",
    }
    record = json.loads((tmp_path / "out" / STATE / RECORD).read_text())
    assert record["run_id"] == manifest["run_id"] != record_before["run_id"]
    assert not (tmp_path / "out" / STATE / record_before["tables"]["cells"]["file"]).exists()
    assert sorted(p.name for p in (tmp_path / "out" / STATE).iterdir()) == sorted(
        [RECORD, record["tables"]["cells"]["file"], record["tables"]["files"]["file"]]
    )


def test_a_covariate_that_differs_between_files_gives_the_cells_of_a_full_scan(
    tmp_path: Path,
) -> None:
    # the per-file counts carry the covariates' values in the cell key: a new file in
    # which every herd's size is constant, but not the size the others give it, adds
    # cells (the same keys, another value), as a one-pass scan of every file does
    for day in range(2):
        _count_rows(_part(tmp_path, day), seed=day)
    cfg = _config(tmp_path, CBIND)
    assert run(load_config(cfg)).manifest["refresh"]["mode"] == "full"
    _count_rows(_part(tmp_path, 2), seed=2)
    frame = pl.read_parquet(_part(tmp_path, 2))
    frame.with_columns(pl.col("herd_size") + 1.0).write_parquet(_part(tmp_path, 2))
    refreshed = run(load_config(cfg))
    assert refreshed.manifest["refresh"]["mode"] == "incremental"
    assert refreshed.manifest["refresh"]["files_scanned"] == 1
    plain, full = _references(tmp_path, CBIND)
    assert_same_statistics(cfg)
    assert_same_fit(refreshed, full)
    assert_same_fit(refreshed, plain, rtol=1e-10)


def test_a_gaussian_store_does_not_serve_a_count_model(tmp_path: Path) -> None:
    for day in range(2):
        _count_rows(_part(tmp_path, day), seed=day)
    cfg = _config(tmp_path, "succ ~ period + (1 | herd)")
    assert run(load_config(cfg)).manifest["refresh"]["mode"] == "full"
    cfg.write_text(cfg.read_text().replace("[output]", 'family = "poisson"\n[output]'))
    outcome = run(load_config(cfg))
    assert outcome.manifest["refresh"]["mode"] == "full"
    assert "the family changed ('gaussian' -> 'poisson')" in outcome.manifest["refresh"]["reason"]
    assert run(load_config(cfg)).manifest["refresh"]["mode"] == "incremental"


def _refresh_record(err: str) -> dict[str, Any]:
    records = [json.loads(line) for line in err.strip().splitlines()]
    (record,) = [r for r in records if r["event"] == "refresh"]
    return record


def _damage_table(out: Path) -> None:
    record = json.loads((out / STATE / RECORD).read_text())
    table = out / STATE / record["tables"]["cells"]["file"]
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))


def _other_version(out: Path) -> None:
    path = out / STATE / RECORD
    record = json.loads(path.read_text())
    record["identity"]["pooljob"] = "0.0.1"
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_damage_table, "does not match store.json"),
        (lambda out: (out / STATE / RECORD).write_text("{not json"), "not a readable store"),
        (lambda out: (out / STATE / RECORD).write_text("{}"), "not a readable store"),
        (_other_version, "the pooljob version changed ('0.0.1' -> "),
        (lambda out: shutil.rmtree(out / STATE), "there is no statistics store yet"),
    ],
)
def test_a_damaged_or_foreign_store_is_rebuilt_and_logged(
    tmp_path: Path, capsys, spoil: Callable[[Path], None], reason: str
) -> None:
    for day in range(2):
        _nested_rows(_part(tmp_path, day), seed=day)
    cfg = _config(tmp_path, NESTED)
    assert main(["--quiet", "run", str(cfg)]) == 0
    _nested_rows(_part(tmp_path, 2), seed=2)
    spoil(tmp_path / "out")
    capsys.readouterr()
    assert main(["--log-format", "json", "run", str(cfg)]) == 0
    record = _refresh_record(capsys.readouterr().err)
    assert record["mode"] == "full" and reason in record["reason"], record
    assert "statistics store rebuilt" in record["message"]
    after = json.loads((tmp_path / "out" / "current" / "manifest.json").read_text())
    assert after["refresh"]["mode"] == "full" and after["refresh"]["files_scanned"] == 3
    assert main(["--quiet", "run", str(cfg)]) == 0  # and the rebuilt store serves the next run
    manifest = json.loads((tmp_path / "out" / "current" / "manifest.json").read_text())
    assert manifest["refresh"]["mode"] == "incremental"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"formula": "sales ~ 1 + (1 | store)"}, "the formula changed"),
        ({"where": "sales > 0"}, "the [source] where filter changed"),
    ],
)
def test_a_store_for_another_model_is_rebuilt(
    tmp_path: Path, capsys, change: dict[str, str], reason: str
) -> None:
    for day in range(2):
        _nested_rows(_part(tmp_path, day), seed=day)
    cfg = _config(tmp_path, NESTED)
    assert main(["--quiet", "run", str(cfg)]) == 0
    text = cfg.read_text()
    if "formula" in change:
        text = text.replace(NESTED, change["formula"])
    else:
        text = text.replace("[model]", f'where = "{change["where"]}"\n[model]')
    cfg.write_text(text)
    capsys.readouterr()
    assert main(["--log-format", "json", "run", str(cfg)]) == 0
    record = _refresh_record(capsys.readouterr().err)
    assert record["mode"] == "full" and reason in record["reason"], record


def test_new_partition_with_other_types_and_fewer_columns(
    tmp_path: Path, scanned: list[list[str]]
) -> None:
    """The scanned files are read with the whole source's schema: cast, or null where missing."""
    for day in range(2):
        _nested_rows(_part(tmp_path, day), seed=day)
        frame = pl.read_parquet(_part(tmp_path, day)).with_columns(note=pl.lit("x"))
        frame.write_parquet(_part(tmp_path, day))
    cfg = _config(tmp_path, NESTED)
    run(load_config(cfg))
    _nested_rows(_part(tmp_path, 2), seed=2)  # no `note` column
    new = pl.read_parquet(_part(tmp_path, 2)).with_columns(pl.col("store").cast(pl.Int32))
    new.write_parquet(_part(tmp_path, 2))
    scanned.clear()
    outcome = run(load_config(cfg))
    assert outcome.manifest["refresh"]["mode"] == "incremental"
    assert scanned == [[str(_part(tmp_path, 2))]]
    plain, _ = _references(tmp_path, NESTED)
    assert_same_fit(outcome, plain)


def test_empty_and_unusable_files_are_kept_and_counted(tmp_path: Path) -> None:
    for day in range(2):
        _general_rows(_part(tmp_path, day), seed=day)
    cfg = _config(tmp_path, "y ~ x + (1 | g)")
    run(load_config(cfg))
    rows = pl.read_parquet(_part(tmp_path, 0))
    _part(tmp_path, 7).parent.mkdir()
    rows.head(0).write_parquet(_part(tmp_path, 7))  # no rows
    _part(tmp_path, 8).parent.mkdir()
    rows.head(5).with_columns(g=pl.lit(None, pl.String)).write_parquet(_part(tmp_path, 8))
    outcome = run(load_config(cfg))
    assert outcome.manifest["refresh"]["files_scanned"] == 2
    assert outcome.result.rows["read"] == 405 and outcome.result.rows["used"] == 396
    assert outcome.result.rows["dropped"]["null_group_key"] == 2 + 5
    record = json.loads((tmp_path / "out" / STATE / RECORD).read_text())
    assert record["files"] == 4
    assert_same_fit(outcome, run(load_config(cfg), full=True))


def test_failed_runs_leave_the_store_untouched(tmp_path: Path, monkeypatch) -> None:
    for day in range(2):
        _nested_rows(_part(tmp_path, day), seed=day)
    cfg = _config(tmp_path, NESTED)
    run(load_config(cfg))
    state = tmp_path / "out" / STATE
    before = tree_digest(state)
    _nested_rows(_part(tmp_path, 2), seed=2)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    import pyarrow.parquet as pq

    with monkeypatch.context() as m:  # the outputs cannot be written: nothing published
        m.setattr(pq, "write_table", boom)
        with pytest.raises(PublishError):
            run(load_config(cfg))
    assert tree_digest(state) == before
    _part(tmp_path, 3).parent.mkdir()
    _part(tmp_path, 3).write_bytes(b"not parquet")  # a bad new file: the refresh fails
    with pytest.raises(InputError, match="too small to be a Parquet file"):
        run(load_config(cfg))
    assert tree_digest(state) == before
    shutil.rmtree(_part(tmp_path, 3).parent)
    outcome = run(load_config(cfg))
    assert outcome.manifest["refresh"]["files_scanned"] == 1
    assert tree_digest(state) != before


def test_a_store_that_cannot_be_saved_is_a_warning(tmp_path: Path, monkeypatch, capsys) -> None:
    for day in range(2):
        _nested_rows(_part(tmp_path, day), seed=day)
    cfg = _config(tmp_path, NESTED)
    assert main(["--quiet", "run", str(cfg)]) == 0
    before = tree_digest(tmp_path / "out" / STATE)
    _nested_rows(_part(tmp_path, 2), seed=2)

    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("pooljob.scan.store._write", no_space)
        capsys.readouterr()
        assert main(["--log-format", "json", "run", str(cfg)]) == 0  # published all the same
    records = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    (state,) = [r for r in records if r["event"] == "state"]
    assert state["level"] == "warning" and "could not be saved" in state["message"]
    assert tree_digest(tmp_path / "out" / STATE) == before  # nothing half-written
    outcome = run(load_config(cfg))  # the next run refreshes from the old store
    assert outcome.manifest["refresh"]["mode"] == "incremental"
    assert outcome.manifest["refresh"]["files_scanned"] == 1


def test_centred_data_keep_their_shifts_until_the_data_move(tmp_path: Path) -> None:
    """A mean of 1e9 is read centred; the store keeps the shift while it still centres."""
    for day in range(2):
        _general_rows(_part(tmp_path, day), seed=day, offset=1e9)
    cfg = _config(tmp_path, GENERAL)
    run(load_config(cfg))
    record = json.loads((tmp_path / "out" / STATE / RECORD).read_text())
    assert record["shifts"][0] != 0.0
    _general_rows(_part(tmp_path, 2), seed=2, offset=1e9 + 3.0)
    outcome = run(load_config(cfg))
    assert outcome.manifest["refresh"]["mode"] == "incremental"
    plain, full = _references(tmp_path, GENERAL)
    assert_same_fit(outcome, full)
    assert_same_fit(outcome, plain, rtol=1e-8)  # the general solver's precision
    for day in range(3):  # every file rewritten far from the shift: it no longer centres
        _general_rows(_part(tmp_path, day), seed=10 + day, offset=-5e9)
    outcome = run(load_config(cfg))
    refresh = outcome.manifest["refresh"]
    assert refresh["mode"] == "full" and "centring shifts" in refresh["reason"]
    assert_same_fit(outcome, _references(tmp_path, GENERAL)[0], rtol=1e-8)


def test_sources_without_files_keep_no_store(tmp_path: Path) -> None:
    import duckdb

    db = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(
            "create table sales as select i % 7 as store, i % 5 + random() as sales "
            "from range(200) t(i)"
        )
    cfg = tmp_path / "db.toml"
    cfg.write_text(
        '[source]\ndatabase = "warehouse.duckdb"\ntable = "sales"\n'
        '[model]\nformula = "sales ~ 1 + (1 | store)"\n[output]\npath = "out"\n'
    )
    outcome = run(load_config(cfg))
    assert outcome.manifest["refresh"]["mode"] == "full"
    assert "database table" in outcome.manifest["refresh"]["reason"]
    assert not (tmp_path / "out" / STATE).exists()
    _nested_rows(_part(tmp_path, 0), seed=0)
    off = run(load_config(_config(tmp_path, NESTED, "off", incremental=False)))
    assert off.manifest["refresh"]["reason"] == "[output] incremental = false"
    assert not (tmp_path / "off" / STATE).exists()


def test_merge_moments_equals_one_pass() -> None:
    rng = np.random.default_rng(7)
    m, cells = 3, 5
    rows = rng.normal(0, 1, (400, m)) * [1.0, 10.0, 0.1] + [3.0, -2.0, 1e3]
    cell = rng.integers(0, cells, 400)
    part = rng.integers(0, 4, 400)  # a file: each cell is split over up to 4 parts
    codes, n, mean, comoment = [], [], [], []
    for c in range(cells):
        for f in range(4):
            v = rows[(cell == c) & (part == f)]
            if len(v):
                codes.append(c)
                n.append(len(v))
                mean.append(v.mean(axis=0))
                comoment.append((v - v.mean(axis=0)).T @ (v - v.mean(axis=0)))
    total, merged_mean, merged = merge_moments(
        np.array(codes), cells, np.array(n, float), np.array(mean), np.array(comoment)
    )
    for c in range(cells):
        v = rows[cell == c]
        assert total[c] == len(v)
        np.testing.assert_allclose(merged_mean[c], v.mean(axis=0), rtol=1e-13)
        d = v - v.mean(axis=0)
        np.testing.assert_allclose(
            merged[c], d.T @ d, rtol=1e-11, atol=1e-11 * np.abs(d.T @ d).max()
        )
