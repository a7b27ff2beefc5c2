"""Errors that are the user's to fix: printed as one clear message, without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input (a file, a row, a flag, a config key). The message says what and where."""
