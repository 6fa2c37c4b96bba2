"""Errors that end a run with one line and an exit code, no traceback (cifarlab.train's main prints them)."""

from __future__ import annotations


class CifarlabError(Exception):
    """The message is one line that says what happened and what to do next."""

    exit_code = 1


class UsageError(CifarlabError):
    """Bad input (config, paths, data, launch settings, a run directory in use)."""

    exit_code = 2


class RunFailed(CifarlabError):
    """The run cannot go on (a checkpoint could not be written, the loss is not finite); what was saved before
    is intact."""

    exit_code = 1


class Preempted(CifarlabError):
    """Raised once a run has saved its checkpoint after a stop signal (see cifarlab.run.preemption)."""

    exit_code = 75
    """EX_TEMPFAIL: the run can go on (the stop line says the command, with train.resume=auto)."""


class Interrupted(Preempted):
    """Stopped by Ctrl-C (SIGINT) after saving its checkpoint: not requeued under SLURM."""

    exit_code = 130
    """128 + SIGINT, what a shell reports for a program stopped by Ctrl-C."""


class Aborted(KeyboardInterrupt):
    """A second Ctrl-C: the run stops at once, without saving. Still a KeyboardInterrupt (what in-process callers
    expect of Ctrl-C); the message says how to continue from the last checkpoint."""

    exit_code = 130


def printable(text: str) -> str:
    """``text`` on one line: each character that does not print (a line break, a control character) as its Python
    escape. Messages quote user text (a file's keys and values, a path), which may hold any."""
    return text if text.isprintable() else "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)
