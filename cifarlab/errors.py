"""Errors the user can fix: reported as one line, exit code 2, no traceback."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input (config, paths, data, launch settings). The message is one line that says
    what is wrong and how to fix it."""

    exit_code = 2


class Preempted(Exception):
    """Raised once a run has saved its checkpoint after a stop signal (see cifarlab.preemption)."""

    exit_code = 75
    """EX_TEMPFAIL: run again (train.resume=auto) to continue."""
