"""pooljob: partially pooled group means from DuckDB sufficient statistics."""

import os

# The solver's dense algebra is small next to DuckDB's scan; a multi-threaded
# BLAS spends more time waking threads than computing (measured here: a 6 × 6
# triangular solve 15 µs with one thread, 5-20 ms with two).  One thread unless
# the user chose otherwise; it only takes effect if numpy is not loaded yet.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pooljob.api import fit, poststratify  # noqa: E402
from pooljob.errors import (  # noqa: E402
    ConfigError,
    FormulaError,
    InputError,
    NonConvergenceError,
    PooljobError,
    PublishError,
    UnsupportedTermError,
)
from pooljob.outputs.tables import FitResult  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FitResult",
    "FormulaError",
    "InputError",
    "NonConvergenceError",
    "PooljobError",
    "PublishError",
    "UnsupportedTermError",
    "__version__",
    "fit",
    "poststratify",
]
