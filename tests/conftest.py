from __future__ import annotations

import os

# One BLAS thread, as `pooljob run` has it (pooljob/__init__.py): with two threads
# on two shared cores, the small dense solves of the references and solvers spend
# their time waking threads (a 1.6 s dense minimisation took 130 s under load).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

DATA = Path(__file__).parent / "data"


def reference(name: str) -> dict[str, Any]:
    """An lme4 1.1-31 fit copied from shared/reference/lme4 (see data/LME4_REFERENCE.md)."""
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One local Spark session for the whole run (a JVM start costs seconds)."""
    from tests.test_spark import _missing

    reason = _missing()
    if reason:
        pytest.skip(reason)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("pooljob-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
