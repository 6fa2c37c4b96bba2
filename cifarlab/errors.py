"""Errors the user can fix: reported as one line, exit code 2, no traceback."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input (config, paths, data, launch settings). The message is one line that says
    what is wrong and how to fix it."""

    exit_code = 2
