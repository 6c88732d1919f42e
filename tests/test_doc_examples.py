"""The examples of the docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pooljob.job.demo import write_poll_data
from tests.conftest import reference

ROOT = Path(__file__).parent.parent


def _python_blocks(doc: str) -> list[str]:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_rates_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    write_poll_data(tmp_path / "demo" / "poll")  # what make demo writes
    monkeypatch.chdir(tmp_path)
    (block,) = [b for b in _python_blocks("rates.md") if "cbind(incidence" in b]
    names: dict[str, object] = {}
    exec(compile(block, "docs/rates.md", "exec"), names)
    cbpp = names["cbpp"]
    ref = reference("cbpp_binomial")
    got = cbpp.coefficients["estimate"].to_numpy()  # type: ignore[attr-defined]
    want = np.array([c["estimate"] for c in ref["fixef"]])
    np.testing.assert_allclose(got, want, rtol=2e-3)
    assert names["by_state"].height == 8  # type: ignore[attr-defined]
    assert "Family: binomial" in capsys.readouterr().out
