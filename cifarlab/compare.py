"""Compare groups of finished runs: mean, spread and 95 % interval of a metric per group, how much of the
spread test-set sampling explains, and each group's difference from a baseline group with a verdict about the
settings (Welch's t on the runs, 2 or more a group; Holm-adjusted when there are several comparisons).

    python -m cifarlab.compare runs/lr-sweep                          # groups: the config keys the runs differ in
    python -m cifarlab.compare runs/a* runs/b* --by optim.lr --by env.processes
    python -m cifarlab.compare runs/sweep --metric time_to_target --baseline 2 --json
    python -m cifarlab.compare runs/sweep --per-class --png compare.png   # .svg, .pdf: the ending picks the format
    python -m cifarlab.compare runs/sweep --plan 0.5                  # seeds per group to find 0.5 points
    python -m cifarlab.compare runs/my-search --png search.png        # a search's folder: its best trials

Runs are grouped by the config keys in which they differ, except the seed and the keys that never change what a run
computes (train.seed, train.run_name, train.output_dir, train.resume, train.allow_changes, train.cpu_threads,
train.timeout_minutes, train.eval_every_epoch, train.test_every_epoch, data.root, data.download, data.num_workers,
logging.*, checkpoint.*), or by the --by keys: a dotted config key, or env.<field> of environment.json
(env.processes, env.mixed_precision). Only finished runs count; the others are listed. Copies of one measurement
(same configuration and seed, or identical predictions) count once. The statistics and what they mean:
docs/compare.md.
A search's folder (a sweep file with search:) shows its completed trials best first by the search's metric and
direction (--metric: by another), with their settings and each searched key's importance (Optuna's, when it is
installed), and with --png the best-so-far curve and each searched setting against the metric (docs/sweeps.md).
Runs a search chose (its trials, its confirm/ runs) judged on the split it chose them on (the test set, or the
validation split: val_acc, best_val_acc, val_loss) get a note: the winner's figure there is optimistic.
Reads only the run directories' files. User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cifarlab.analysis import searchview, selection
from cifarlab.analysis.comparison import compare
from cifarlab.analysis.metric import DEFAULT, METRICS
from cifarlab.analysis.planning import plan
from cifarlab.analysis.rendering import picture, render, to_json
from cifarlab.analysis.results import read_runs
from cifarlab.analysis.sweepdir import SweepDir
from cifarlab.errors import UsageError
from cifarlab.files import typed
from cifarlab.report import console, figures

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# --- entry point ----------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cifarlab.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run directories, folders of runs, or glob patterns")
    parser.add_argument("--by", action="append", default=[], metavar="KEY",
                        help="group by this config key (optim.lr) or environment field (env.processes); repeatable")
    parser.add_argument("--metric", help=f"one of {', '.join(METRICS)} (default final_acc; for a search's folder, "
                                          f"the search's metric, in its direction)")
    parser.add_argument("--baseline", metavar="GROUP",
                        help="the group the others are compared with: its number in the table, or its label "
                             "(default: the first group)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    parser.add_argument("--png", type=Path, metavar="FILE",
                        help="also draw each run, the groups' intervals and the differences with their adjusted "
                             "intervals into this picture; the name's ending picks the format: "
                             f"{figures.endings()} (a search's folder: its trials and settings)")
    parser.add_argument("--per-class", action="store_true", help="also show per-class accuracy (tables, picture)")
    parser.add_argument("--adjust", choices=("holm", "bh", "none"), default="holm",
                        help="adjustment of the p-values for several comparisons: holm (family-wise error, the "
                             "default), bh (Benjamini-Hochberg false discovery rate) or none")
    parser.add_argument("--plan", type=float, metavar="DELTA",
                        help="also say how many runs (seeds) per group find a difference of DELTA (in points for "
                             "accuracies) with 80 %% power, and the smallest difference the current runs find")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.metric is not None and args.metric not in METRICS:
            raise UsageError(f"--metric {args.metric}: unknown; one of {', '.join(METRICS)}")
        if args.png is not None:
            figures.check("--png", args.png)
        if len(args.paths) == 1 and searchview.is_search(args.paths[0]):
            return search(Path(args.paths[0]), args)
        metric = METRICS[args.metric or DEFAULT]
        runs = read_runs(args.paths)
        report = compare(runs, args.by, metric, args.baseline, args.adjust)
        report.notes += [note for note in [selection.runs_note(metric, [run.path for run in runs])] if note]
        planned = plan(report, args.plan / metric.scale) if args.plan is not None else None
    except UsageError as error:
        console.error(str(error))
        return error.exit_code
    for line in report.warnings:
        console.warning(line)
    for line in report.notes:
        console.note(line)
    if args.json:
        sys.stdout.write(json.dumps(to_json(report, planned), indent=2) + "\n")
    else:
        # Piped output (tests, `| less`) gets a wide console so the tables are never wrapped at 80 columns.
        render(report, args.per_class, None if sys.stdout.isatty() else 200, planned)
    return _save(picture(report, args.per_class), args.png) if args.png is not None else 0


def _save(chart: Figure, path: Path) -> int:
    try:
        figures.save(chart, path)
    except UsageError as error:  # checked before: the folder refuses us (permissions, a full disk), a link since
        console.error(str(error))
        return error.exit_code
    console.note(f"picture written to {typed(path)}")
    return 0


def search(folder: Path, args: argparse.Namespace) -> int:
    """A search's folder: its best trials with their settings (cifarlab.analysis.searchview)."""
    if args.by or args.baseline or args.plan is not None or args.per_class:
        raise UsageError(f"{folder} is a search: --by, --baseline, --plan and --per-class compare groups of runs; "
                         f"use them on its confirmation, {typed(SweepDir(folder).confirmation.root)}")
    goal = searchview.objective(folder, args.metric)
    if goal.keys is None and args.metric is None:
        console.note(f"{folder} does not say what its search optimizes (a search from before cifarlab wrote "
                     f"{typed(SweepDir(folder).description)}): ranked by {goal.metric.name}; --metric picks another")
    chosen = selection.selection_note(goal.metric, [folder])
    if chosen is not None:
        console.note(chosen)
    trials, keys = searchview.read_trials(folder, goal)
    taught = _importances(goal, trials)
    if args.json:
        listed = searchview.to_json(folder, trials, keys, goal)
        sys.stdout.write(json.dumps({**listed, "importance": taught and taught[0]}, indent=2) + "\n")
    else:
        searchview.render(folder, trials, keys, goal, None if sys.stdout.isatty() else 200)
        if taught is not None:
            print("\n".join(console.terminal_line(line, indent=4) for line in taught[1]))
    return _save(searchview.picture(trials, keys, goal), args.png) if args.png is not None else 0


def _importances(goal: searchview.Objective, trials: list[searchview.SearchTrial]
                 ) -> Optional[tuple[dict[str, Any], list[str]]]:
    """What the search teaches: each searched key's importance over the completed trials, as JSON and as lines
    (cifarlab.experiments.insight, imported here only: a run or grid folder needs neither Optuna nor what runs
    trials; --list prints the same figures). None, with a note, where Optuna is not installed."""
    from cifarlab.experiments import insight

    missing = insight.missing()
    if missing is not None:
        console.note(missing)
        return None
    found = insight.importances(goal, [(t.settings, t.value or 0.0) for t in searchview.ranked(trials, goal)])
    return ({"evaluator": insight.EVALUATOR, "trials": found.trials, "shares": found.shares,
             "none": found.why_not}, insight.lines(found, goal))


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
