"""Named errors, each carrying the process exit code the CLI uses.

Every message is one line: what is wrong, the value received, and what to do.
"""

from __future__ import annotations


class PooljobError(Exception):
    """Base class of the errors pooljob reports to its users."""

    exit_code = 70  # EX_SOFTWARE: an internal error


class ConfigError(PooljobError):
    """The configuration file (or API arguments) is invalid."""

    exit_code = 2


class FormulaError(ConfigError):
    """The model formula cannot be parsed."""


class UnsupportedTermError(FormulaError):
    """The formula is valid lme4 syntax but uses a term pooljob cannot fit yet."""


class InputError(PooljobError):
    """The source data is missing, unreadable or unusable for the model."""

    exit_code = 3


class MissingColumnError(InputError):
    """A column named in the formula is not in the source."""


class NotNestedError(InputError):
    """Groupings that should form a hierarchy are crossed in the data."""


class SourceChangedError(InputError):
    """A source file was written, added or removed while the job read it."""


class PublishError(PooljobError):
    """The outputs could not be written or published."""

    exit_code = 5


class LockHeldError(PooljobError):
    """Another run holds the lock on the output directory."""

    exit_code = 4


class NonConvergenceError(PooljobError):
    """The fit failed the convergence check; nothing was published.

    Raised when ``on_nonconvergence = "fail"`` (the default); with
    ``"publish"`` the fit is published with ``converged = false`` instead.
    """

    exit_code = 6
