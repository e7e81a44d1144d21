"""dmlm's own error types: what a user can fix (bad input, data, settings, missing files).

The CLI prints these as one line and exits with status 2; anything else is a bug and shows
its traceback. Each subclasses the built-in type it refines (`ValueError`, `FileNotFoundError`,
`OSError`), so callers that catch those keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input, data or settings that cannot be used; the message names the file/field and what was expected."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or a stage should have written) does not exist."""


class OutputError(UserError, OSError):
    """An output cannot be written (no space, no permission); earlier outputs are left intact."""
