"""User-facing errors: the one base class the CLI turns into a one-line message and exit status 2.

Every error a user can cause (a bad config value, a missing file, a corrupt checkpoint or bundle, a
bad sampling parameter) is a `UserError` subclass defined next to the code that raises it (here when
several modules raise it). Anything
else that escapes is a bug and the CLI shows its traceback. Torch-free: the deployment path imports it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message names it and what is allowed, on one line."""


class TrainingError(UserError, RuntimeError):
    """Training cannot start or cannot go on (divergence, a folder or config that does not fit)."""
