"""pooljob: partially pooled group means from DuckDB sufficient statistics."""

from pooljob.api import fit
from pooljob.errors import (
    ConfigError,
    FormulaError,
    InputError,
    PooljobError,
    PublishError,
    UnsupportedTermError,
)
from pooljob.results import FitResult

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FitResult",
    "FormulaError",
    "InputError",
    "PooljobError",
    "PublishError",
    "UnsupportedTermError",
    "__version__",
    "fit",
]
