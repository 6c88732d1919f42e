"""Operating-system errors while publishing, as one-line :class:`PublishError` messages.

Python raises :class:`OSError` with an ``errno``; polars (Rust) raises its own
exceptions whose text ends in ``(os error 28)``.  Both become a message that
says what could not be done, to which path, why, and what to do.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from pooljob.errors import PublishError

_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")

_REASONS = {
    errno.ENOSPC: (
        "no space left on the device",
        "free space there (or lower [output] keep_runs)",
    ),
    errno.EDQUOT: ("disk quota exceeded", "free space there or raise the quota"),
    errno.EACCES: (
        "permission denied",
        "give the user running pooljob write access, or choose another [output] path",
    ),
    errno.EPERM: (
        "operation not permitted (an immutable or protected file?)",
        "check its attributes (lsattr) and owner, or choose another [output] path",
    ),
    errno.EROFS: (
        "read-only file system",
        "remount it read-write or choose another [output] path",
    ),
    errno.ENOLCK: (
        "the file system does not support locks",
        "choose an [output] path on a local file system",
    ),
}


def errno_of(exc: BaseException) -> int | None:
    """The errno behind ``exc``: an OSError's, or one named as ``(os error N)``."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    match = _RUST_OS_ERROR.search(str(exc))
    return int(match.group(1)) if match else None


def os_error(action: str, path: Path | str, exc: BaseException) -> PublishError:
    """A one-line :class:`PublishError` for ``exc`` raised while doing ``action`` on ``path``.

    Parameters
    ----------
    action : str
        What could not be done, completing "cannot …", e.g. ``"write the run to"``.
    path : Path or str
    exc : BaseException
        An OSError, or an exception whose text names an ``(os error N)``.
    """
    code = errno_of(exc) or 0
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    default = (os.strerror(code).lower() if code else text, "check the output directory")
    reason, todo = _REASONS.get(code, default)
    return PublishError(
        f"cannot {action} {str(path)!r}: {reason}; {todo}; the published output was left as it was"
    )
