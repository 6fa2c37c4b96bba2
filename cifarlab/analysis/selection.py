"""What a search's choice is worth on the test set. A search chooses its winners on one split; a figure measured on
the images a choice was made on is optimistic (the winner's curse reaches the split, not only the seeds), so the
test set reports a choice only where the choosing was done on a validation split (``data.val_size``). Here: which
search chose a run, compare's note when it judges runs on the split their search chose on, and the line a search's
confirmation and ``--best`` end with: whether the winner beat the base configuration on fresh seeds, on the test set.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from cifarlab.analysis import comparison, searchview
from cifarlab.analysis.comparison import SIGNIFICANCE, Difference, Report
from cifarlab.analysis.metric import DEFAULT, Metric
from cifarlab.analysis.sweepdir import CONFIRMATION, SweepDir
from cifarlab.errors import UsageError
from cifarlab.files import typed

SPLIT_NAMES = {"test": "the test set", "val": "the validation split"}


# --- which search chose a run ----------------------------------------------------------------------------------


def chosen_by(run: Path) -> Optional[Path]:
    """The search folder whose choice ``run`` is: one of its trials (``<search>/trial-NNNN``) or of its confirmation
    (``<search>/confirm/<run>``, the winners and the base on fresh seeds); None for any other run."""
    parent = run.parent
    if SweepDir(parent).is_search():
        return parent
    if parent.name == CONFIRMATION and SweepDir(parent.parent).is_search():
        return parent.parent
    return None


def chose_on(folder: Path) -> Optional[Metric]:
    """The metric a search folder chose on (its search.yaml; final_acc for a folder from before it, as compare ranks
    one); None where search.yaml is not what a search writes (compare's table does not need it)."""
    try:
        return searchview.objective(folder, None).metric
    except UsageError:
        return None


def selection_note(judged: Metric, searches: Iterable[Path]) -> Optional[str]:
    """compare's note when the runs it judges on ``judged`` were chosen by one of ``searches`` on the same split
    (the test set, or the validation split): the winner's figure there is optimistic. None otherwise (a search that
    chose on the validation split, judged on the test set: what the test set is for)."""
    for folder in sorted(set(searches)):
        chose = chose_on(folder)
        if chose is None or chose.split is None or chose.split != judged.split:
            continue
        fix = ("hold out a validation split (data.val_size) for the search to choose on, and judge on the test set"
               if chose.split == "test" else f"judge them on the test set (--metric {chose.on_test})")
        return (f"these runs were chosen by the search {typed(folder)} on {SPLIT_NAMES[chose.split]} ({chose.name}), "
                f"and {judged.name} judges them on it too: the winner's figure is optimistic (chosen on the same "
                f"images); {fix}")
    return None


def runs_note(judged: Metric, runs: Sequence[Path]) -> Optional[str]:
    """:func:`selection_note` for the searches that chose any of ``runs``."""
    return selection_note(judged, [folder for folder in map(chosen_by, runs) if folder is not None])


# --- the confirmation's last line ------------------------------------------------------------------------------


def means(report: Report, metric: Metric) -> list[Optional[float]]:
    """Each group's mean of ``metric`` over its counted runs (the validation figure beside a test report's)."""
    if metric.name == report.metric.name:
        return [g.summary.mean for g in report.groups]
    return [comparison.summarize_group(g.group, metric).summary.mean for g in report.groups]


def winner(report: Report, chooser: Metric) -> Optional[Difference]:
    """The best searched setting's difference from the base (the report's baseline), chosen by ``chooser``'s group
    means (the search's metric: a validation one chooses on the validation split); None without one."""
    chosen = means(report, chooser)
    sign = 1.0 if chooser.higher_is_better else -1.0
    scored = [(sign * mean, d) for d in report.differences
              if (mean := chosen[report.groups.index(d.group)]) is not None]
    return max(scored, key=lambda pair: pair[0])[1] if scored else None


def outcome_line(report: Report, chooser: Metric, folder: Path) -> str:
    """Whether the search's winner (:func:`winner`) beat the base on fresh seeds, on the report's metric (a test one),
    with the difference and its adjusted p; with no significant difference, the command that says how many seeds
    would tell them apart (compare --plan on the confirmation's ``folder``)."""
    metric, found = report.metric, winner(report, chooser)
    where = f"on {SPLIT_NAMES[metric.split]}" if metric.split else f"in {metric.name}"
    if found is None or found.diff is None:
        return f"no searched setting to test against the base on fresh seeds {where}: the base configuration alone " \
               f"was confirmed"
    label, unit = found.group.group.label, " points" if metric.unit == "%" else f" {metric.unit}".rstrip()
    if found.p_adjusted is None:
        return f"no test {where} between the winner ({label}) and the base: {found.verdict.split(': ', 1)[-1]}"
    tests = sum(d.p is not None for d in report.differences)
    p = f"p = {found.p_adjusted:.3g}" + (f", {report.adjust}-adjusted" if report.adjust != "none" and tests > 1
                                          else "")
    shown = f"{found.diff * metric.scale:+.{metric.digits}f}{unit}, {p}"
    if found.p_adjusted < SIGNIFICANCE:
        if (found.diff > 0) == metric.higher_is_better:
            return f"the winner ({label}) beat the base on fresh seeds {where}: {shown}"
        return f"the base beat the winner ({label}) on fresh seeds {where}: {shown}"
    delta = max(round(abs(found.diff) * metric.scale, metric.digits), 10.0 ** -metric.digits)
    command = shlex.join(["python", "-m", "cifarlab.compare", typed(folder), "--plan", f"{delta:g}",
                          *(["--metric", metric.name] if metric.name != DEFAULT else [])])
    return (f"no significant difference {where} between the winner ({label}) and the base ({shown}): the base is as "
            f"good; --plan says how many seeds would tell them apart: {command}")
