"""The one exception type for mistakes a user can make (bad files, shapes, options).

The command line prints these as one line and exits non-zero; anything else is a bug
and keeps its traceback.
"""

__all__ = ["IntVitError"]


class IntVitError(ValueError):
    """A user-facing error: the message names the file or field and the problem."""
