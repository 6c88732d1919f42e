from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent / "data"


def reference(name: str) -> dict[str, Any]:
    """An lme4 1.1-31 fit copied from shared/reference/lme4 (see data/LME4_REFERENCE.md)."""
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.fixture
def data_dir() -> Path:
    return DATA
