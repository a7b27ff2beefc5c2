"""Errors that are the user's to fix: printed as one clear message, without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input (a file, a row, a flag, a config key). The message says what and where."""


class NotJSONError(UserError, ValueError):
    """A JSON file that does not parse (truncated by a crash, edited by hand). A ValueError too, so
    code that tolerates a damaged marker file (and rewrites it) keeps doing so."""
