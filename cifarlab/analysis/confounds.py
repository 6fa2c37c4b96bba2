"""What can change results while the config stays the same: the fields of environment.json (torch, host class,
GPUs, precision, processes, git commit, data) on which compared runs disagree, named in compare's warnings."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Optional

from cifarlab.analysis.results import Run
from cifarlab.config import shown

ENV_PREFIX = "env."
"""``--by env.<field>`` groups by a field of environment.json."""


def _host_class(host: Any) -> Optional[str]:
    """The host name with its digits generalised: node012 and node007 are one class of machine."""
    return re.sub(r"\d+", "#", str(host)) if host else None


def _gpu_names(gpus: Any) -> Optional[str]:
    if not isinstance(gpus, list):
        return None
    return ", ".join(sorted(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in gpus)) or "none"


def _git(git: Any) -> Optional[str]:
    if not isinstance(git, dict) or not git.get("commit"):
        return None
    return str(git["commit"])[:12] + ("+dirty" if git.get("dirty") else "")


ENV_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("torch", "torch", lambda v: v),
    ("host class", "host", _host_class),
    ("GPUs", "gpus", _gpu_names),
    ("mixed_precision", "mixed_precision", lambda v: v),
    ("processes", "processes", lambda v: v),
    ("git commit", "git", _git),
    ("data_fingerprint", "data_fingerprint", lambda v: v),
)
"""(name in warnings, environment.json field, how its value is compared): what can change results while the
config stays the same."""


def environment_warnings(groups: Sequence[tuple[str, Sequence[Run]]], keys: Sequence[str]) -> list[str]:
    """One line per environment field on which the compared runs (each group's label and counted runs) do not all
    agree, with each group's values (runs without the field aside): between groups it confounds the comparison,
    within one it adds spread. A field that is a grouping key is meant to differ."""
    lines = []
    for name, source, compared in ENV_FIELDS:
        if f"{ENV_PREFIX}{source}" in keys:
            continue
        per_group = [sorted({shown(v) for v in (compared(run.env(source)) for run in runs) if v is not None})
                     for _, runs in groups]
        if len({value for values in per_group for value in values}) > 1:
            detail = "; ".join(f"{label}: {', '.join(values)}"
                               for (label, _), values in zip(groups, per_group) if values)
            lines.append(f"runs differ in environment {name}: {detail} (split them with --by env.{source})")
    return lines
