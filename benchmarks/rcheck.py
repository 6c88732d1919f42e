"""Find Rscript with lme4 for the benchmarks that compare against it."""

from __future__ import annotations

import shutil
import subprocess


def rscript_with_lme4(label: str) -> str | None:
    """The path of Rscript if R has lme4 and jsonlite; else None, saying why (as ``label``)."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        print(f"{label}: skipped (Rscript not found on PATH)")
        return None
    check = subprocess.run(
        [rscript, "-e", "suppressPackageStartupMessages({library(lme4); library(jsonlite)})"],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        reason = (check.stderr.strip().splitlines() or ["unknown error"])[-1]
        print(f"{label}: skipped (R has no lme4/jsonlite: {reason})")
        return None
    return rscript
