"""The two failures that are the user's to fix, raised where the problem is found; anything else is a bug.

The stage runner and `transferlab predict` print a `UserError` as one line naming the key or file and exit 2;
every other exception (ValueError included) keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input: a parameter, a data file, a command-line argument. The message names the key or the file."""


class DamagedFile(UserError):
    """A file one stage wrote and another reads is not what was written (truncated, altered, unreadable); the
    message names it and the stage to re-run."""
