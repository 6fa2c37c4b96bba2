"""A search, run by ``python -m cifarlab.sweep FILE`` when FILE has a ``search:`` section: this process is one
worker of the study (with ``--parallel N`` it runs N trials at a time); when the study has its trials, the best
settings are confirmed on fresh seeds (``search: confirm:``) and compared, with compare's calibrated table, against
the base configuration. ``--list`` shows the study's trials and what they teach (each searched key's importance),
``--best`` the best confirmed settings as trainer options (returned for the command to print); both read what the
search optimizes from its folder (search.yaml), as compare does.

The confirmation is an ordinary sweep file the search writes, ``<sweep folder>/confirm.yaml`` (its trials in
``<sweep folder>/confirm/``), shared by every worker that gets there: each takes the runs nobody else holds."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from cifarlab.analysis import selection
from cifarlab.analysis.comparison import Report, compare, group_runs
from cifarlab.analysis.metric import METRICS
from cifarlab.analysis.rendering import render
from cifarlab.analysis.results import read_run
from cifarlab.analysis.searchview import Objective, described
from cifarlab.analysis.sweepdir import CONFIRMATION, trial_name
from cifarlab.config import load_config
from cifarlab.errors import UsageError
from cifarlab.experiments import insight, space
from cifarlab.experiments.record import Trial
from cifarlab.experiments.runner import Runner, finished, say, status, write_record, write_whole
from cifarlab.experiments.spec import Sweep, identity, read_sweep, setting
from cifarlab.experiments.study import (
    ClaimFeed,
    Claims,
    StudyFeed,
    open_study,
    progress,
    reading,
    sampled_trial,
)
from cifarlab.files import typed
from cifarlab.report import console


def main(sweep: Sweep, args: argparse.Namespace) -> int:
    assert sweep.search is not None
    if args.count:
        raise UsageError("--count: a search's SLURM array tasks are its workers, as many as you like: "
                         "sbatch --array=0-3 slurm/sweep.sbatch FILE runs 4 (docs/sweeps.md)")
    if args.dry_run:
        raise UsageError("--dry-run: a search samples its trials as it runs; --list shows those sampled so far")
    study = open_study(sweep)
    search = sweep.search
    worker = f" (worker {args.trial})" if args.trial is not None else ""
    say(sweep, f"search{worker}: {search.trials} trials, {search.method}, {search.direction} {search.metric}, "
               f"pruning {search.pruning}, {args.parallel} at a time, in {typed(sweep.folder)}; "
               f"{progress(sweep, study)}")
    code = Runner(sweep, args.parallel).run(StudyFeed(sweep, study))
    failed = _count(study, "FAIL")
    if code in (0, 1) and failed >= search.trials > _count(study, "COMPLETE") + _count(study, "PRUNED"):
        # However they failed: their trainers, or the feed (settings that do not load, a worker lost mid-sampling).
        say(sweep, f"no more trials sampled: {failed} failed, as many as trials: asks for; see --list and their logs")
        return 1
    if code == 1:
        code = 0  # a failed trial (diverged, say) does not count: the study sampled another in its place
    if code != 0:
        return code
    running = _count(study, "RUNNING")
    if running:
        say(sweep, f"{running} trial(s) still running under other workers (or to be resumed: run the search "
                   f"again once they have stopped); {progress(sweep, study)}")
        return 0
    say(sweep, f"search done: {progress(sweep, study)}")
    goal = objective(sweep)
    logged = insight.log_summary(sweep, study, goal, next(iter(ranked(study, goal)), None))
    if logged is not None:
        say(sweep, logged)
    return confirm(sweep, study, args.parallel) if search.confirm is not None else 0


def _count(study: Any, state: str) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState[state],)))


def objective(sweep: Sweep) -> Objective:
    """What the search optimizes, as its folder says (search.yaml, cifarlab.analysis.searchview.described: the one
    reader of it, compare's too); the file's search for a folder from before search.yaml (reading() has checked it
    against the study's own record). Refused where the folder's differs from the file's: an edited search.yaml (a
    study of another search is refused before, by reading())."""
    assert sweep.search is not None
    ours = sweep.search.identity()
    found = described(sweep.folder, "move it away: the search writes it again when it next runs")
    if found is not None and (found != ours or list(found["space"]) != list(ours["space"])):  # its keys' order too
        what = next((key for key in ours if found.get(key) != ours[key]), "space")
        raise UsageError(f"{typed(sweep.dir.description)} gives the search another {what} than {sweep.source} "
                         f"(edited, or another search's); move it away: the search writes it again when it next runs")
    found = found or ours
    return Objective(METRICS[found["metric"]], found["direction"] == "maximize", [str(key) for key in found["space"]],
                     found["space"])


def ranked(study: Any, goal: Objective) -> list[Any]:
    """The study's completed trials, best first (ties: the earlier trial)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    sign = -1.0 if goal.maximize else 1.0
    return sorted(complete, key=lambda t: (sign * t.value, t.number))


def listing(sweep: Sweep) -> list[str]:
    """``--list``: a header, then every trial of the study with its state, value and settings (nothing written)."""
    with reading(sweep) as study:
        return _listing(sweep, study, objective(sweep))


def show_listing(sweep: Sweep) -> None:
    """``--list`` as the command prints it: the :func:`listing` on stdout, then on stderr what the search teaches
    so far, each searched key's importance (cifarlab.experiments.insight; stdout stays one row a trial for cut and
    grep)."""
    assert sweep.search is not None
    with reading(sweep) as study:
        goal = objective(sweep)
        header, *rows = (line.split("\t") for line in _listing(sweep, study, goal))
        console.print_columns(header, rows)
        found = insight.of_study(study, goal, sweep.search) if study is not None else insight.importances(goal, [])
        print("\n".join(console.terminal_line(line, 4, sys.stderr) for line in insight.lines(found, goal)),
              file=sys.stderr)


def _listing(sweep: Sweep, study: Optional[Any], goal: Objective) -> list[str]:
    assert sweep.search is not None
    lines = ["index\tstate\tname\tvalue\toverrides"]
    for frozen in study.get_trials(deepcopy=False) if study is not None else []:
        state = frozen.state.name.lower()
        if state == "running":
            state += f" ({status(sweep, _as_trial(sweep, frozen))})"
        value = goal.metric.with_unit(frozen.value) if frozen.value is not None else "-"
        chosen = space.settings(sweep.search, frozen.params) if frozen.params else {}
        settings = " ".join(setting(key, value) for key, value in chosen.items())
        lines.append(f"{frozen.number}\t{state}\t{trial_name(frozen.number)}\t{value}\t{settings}")
    return lines


def _as_trial(sweep: Sweep, frozen: Any) -> Trial:
    """A running trial as it trains (its run directory is judged against its own settings); one that lost its worker
    before its settings were sampled has none."""
    assert sweep.search is not None
    if set(frozen.params) == {param.key for param in sweep.search.space}:
        return sampled_trial(sweep, frozen.number, frozen.params)
    trial = Trial(frozen.number, trial_name(frozen.number), ())
    sweep.configs.setdefault(frozen.number, load_config(sweep.base, sweep.overrides(trial)))
    return trial


# --- confirmation ------------------------------------------------------------------------------------------


def winners(sweep: Sweep, study: Any) -> tuple[list[Any], Optional[Any]]:
    """The best completed trials of the ``confirm.top`` best distinct settings (after rounding; told apart by the
    configuration they train, spec.identity: two trials of one setting are confirmed once), best first, less the
    one whose settings are the base configuration's, returned second: it is confirmed as the control."""
    assert sweep.search is not None and sweep.search.confirm is not None
    base = identity(load_config(sweep.base, list(sweep.common)))
    seen: set[str] = set()
    chosen, control = [], None
    for trial in ranked(study, objective(sweep)):
        if len(seen) == sweep.search.confirm.top:
            break
        settings = [setting(key, value) for key, value in space.settings(sweep.search, trial.params).items()]
        trains = identity(load_config(sweep.base, [*sweep.common, *settings]))
        if trains in seen:
            continue
        seen.add(trains)
        if trains == base:
            control = trial
        else:
            chosen.append(trial)
    return chosen, control


def confirm_file(sweep: Sweep, study: Any) -> Path:
    """``<folder>/confirm.yaml``: the :func:`winners`' settings and the base configuration (no settings: the
    control), each with ``confirm.seeds`` seeds after the base configuration's train.seed (the seed every trial
    used)."""
    assert sweep.search is not None and sweep.search.confirm is not None
    chosen, control = winners(sweep, study)
    if not chosen and control is None:
        raise UsageError(f"search {sweep.name}: no trial completed (all pruned or failed): nothing to confirm")
    seed = load_config(sweep.base, list(sweep.common)).train.seed
    common = [item for item in sweep.common if not item.startswith("train.output_dir=")]
    group = [] if any(item.startswith("logging.wandb.group=") for item in common) else [
        f"logging.wandb.group={sweep.name}-confirm"]  # not "confirm": every search's confirmation would share it
    spec = {"name": CONFIRMATION, **({"base": str(Path(sweep.base).resolve())} if sweep.base else {}),
            "overrides": [*common, f"train.output_dir={sweep.folder.resolve()}", *group],
            "trials": [{}, *[space.settings(sweep.search, t.params) for t in chosen]],
            "seeds": [seed + i for i in range(1, sweep.search.confirm.seeds + 1)],
            **({"launch": [shlex.join(sweep.launch)]} if sweep.launch else {})}
    path = sweep.dir.confirmation_file
    text = "# written by cifarlab.sweep: the search's best settings and the base, on fresh seeds\n" + \
        OmegaConf.to_yaml(OmegaConf.create(spec))
    if not path.is_file() or path.read_text() != text:
        write_whole(path, text)
    return path


def confirm(sweep: Sweep, study: Any, parallel: int) -> int:
    """Run the confirmation (the runs no other worker holds), then print its table once every run has finished."""
    assert sweep.search is not None and sweep.search.confirm is not None
    check = read_sweep(str(confirm_file(sweep, study)), trainer=sweep.trainer)  # the search's trainer, not the file's
    chosen, control = winners(sweep, study)
    goal = objective(sweep)
    write_record(check)
    if control is not None:
        say(sweep, f"trial {control.number} {trial_name(control.number)} has the base configuration's settings: "
                   f"it is confirmed as the control, not a second time")
    what = f"the {len(chosen)} best setting(s) and the base configuration" if chosen else "the base configuration"
    say(sweep, f"confirming {what} on {sweep.search.confirm.seeds} fresh seeds each: {len(check.trials)} runs in "
               f"{typed(check.folder)}")
    code = Runner(check, min(parallel, len(check.trials))).run(ClaimFeed(list(check.trials), Claims(sweep.dir)))
    if code != 0:
        return code
    if not all(finished(check, t) for t in check.trials):
        say(sweep, "other workers are still running confirmation runs; run the search again for the table")
        return 0
    report = confirmed(check, goal)
    render(report, False, None if sys.stdout.isatty() else 200)
    for line in _settings_lines(sweep, report, goal, chosen, control):
        say(sweep, line)
    note = selection.selection_note(report.metric, [sweep.folder])
    if note is not None:
        say(sweep, note)
    say(sweep, selection.outcome_line(report, goal.metric, check.folder))
    return 0


def _settings_lines(sweep: Sweep, report: Report, goal: Objective, chosen: list[Any], control: Optional[Any]
                    ) -> list[str]:
    """Each confirmed setting's search score next to its confirmed mean; where the search chose on the validation
    split, the score is marked (val) and the test mean (what the report judges) has the validation mean beside it."""
    assert sweep.search is not None
    keys, metric = goal.keys or [], goal.metric
    val = metric.on_test is not None
    searched = {tuple(space.settings(sweep.search, t.params).values()): t for t in chosen}
    chosen_means = selection.means(report, metric)
    lines = []
    for result, chose in zip(report.groups, chosen_means):
        mean = report.metric.with_unit(result.summary.mean) if result.summary.mean is not None else "-"
        if val:
            mean = f"{mean} test, {metric.with_unit(chose) if chose is not None else '-'} val"
        mark = " (val)" if val else ""
        if result is report.groups[report.baseline]:
            found = "the base configuration (control)" + (
                f"; trial {control.number} scored {metric.with_unit(control.value)}{mark} with these settings in "
                f"the search" if control is not None else "")
        else:
            trial = searched.get(tuple(result.group.overrides.get(k) for k in keys))
            found = (f"trial {trial.number} scored {metric.with_unit(trial.value)}{mark} in the search"
                     if trial is not None else "a searched setting")
        lines.append(f"{result.group.label}: {found}; confirmed {mean} (mean of {result.summary.n} fresh seeds)")
    return lines


def confirmed(check: Sweep, goal: Objective) -> Report:
    """compare's report on the confirmation runs (``check``), grouped by the searched keys, the base configuration
    (the control) as the baseline, on the test set: a search that chose on the validation split is judged on the
    metric's test-set counterpart (val_acc: final_acc; Metric.on_test)."""
    runs = [read_run(check.run_dir(t).root) for t in check.trials]
    keys = goal.keys or []
    control = {key: run.config.get(key) for run in runs[:1] for key in keys}
    groups = group_runs([run for run in runs if run.finished], keys)  # compare's groups, in its order
    base = next((i for i, g in enumerate(groups) if g.overrides == control), 0)
    return compare(runs, keys, METRICS[goal.metric.on_test or goal.metric.name], str(base + 1))


def best(sweep: Sweep) -> str:
    """``--best``: the best confirmed settings (the best search trial's, said to be unconfirmed, without
    ``confirm:``) as the trainer's options (nothing written)."""
    with reading(sweep) as study:
        return _best(sweep, study)


def _best(sweep: Sweep, study: Optional[Any]) -> str:
    assert sweep.search is not None
    if study is None:
        raise UsageError(f"--best: search {sweep.name} has not started ({typed(sweep.dir.journal)} does not exist)")
    goal = objective(sweep)
    keys = goal.keys or []
    if sweep.search.confirm is None:
        top = ranked(study, goal)
        if not top:
            raise UsageError(f"--best: search {sweep.name} has no completed trial yet")
        chosen = space.settings(sweep.search, top[0].params)
        console.note(f"trial {top[0].number}'s settings, not confirmed: the best of {len(top)} noisy trials "
                     f"overstates its score; add search: confirm: to re-run it on fresh seeds")
    else:
        check = read_sweep(str(sweep.dir.confirmation_file)) if sweep.dir.confirmation_file.is_file() else None
        if check is None or not all(finished(check, t) for t in check.trials):
            raise UsageError(f"--best: search {sweep.name} has no finished confirmation yet; run the search to its end")
        report = confirmed(check, goal)
        sign = 1.0 if goal.maximize else -1.0
        # Chosen on the search's own metric (a validation one: the validation split), as the search chose.
        scored = [(sign * mean, g) for g, mean in zip(report.groups, selection.means(report, goal.metric))
                  if mean is not None]
        winner = max(scored, key=lambda pair: pair[0])[1]
        chosen = {key: winner.group.overrides.get(key) for key in keys}
        if winner is report.groups[report.baseline]:
            control = winners(sweep, study)[1]
            console.note("the base configuration did best in the confirmation" + (
                f" (trial {control.number} of the search had its settings)" if control is not None else "") +
                ": none of the searched settings beat it")
        console.note(selection.outcome_line(report, goal.metric, check.folder))
    settings = {item.split("=", 1)[0]: item for item in sweep.common}  # the last of a key's values wins
    settings.pop("train.output_dir", None)
    settings.update({key: setting(key, chosen[key]) for key in keys})
    return shlex.join([*(["--config", sweep.base] if sweep.base else []), *settings.values()])


# --- pictures ----------------------------------------------------------------------------------------------

PICTURES = ("history", "slice", "importances")
"""``--list --png FILE.png`` writes Optuna's three pictures of the study beside each other: FILE-history.png,
FILE-slice.png and FILE-importances.png. One file each: Optuna draws each as a figure of its own (the slice a row of
panels with a colour bar), and matplotlib cannot move a drawing from one figure into another; joined, they would
have to be drawn again (no longer Optuna's) or pasted as pixels (no longer vector in an SVG or PDF)."""


def picture_files(path: Path) -> list[Path]:
    return [path.with_name(f"{path.stem}-{name}{path.suffix}") for name in PICTURES]


def search_pictures(sweep: Sweep, path: Path) -> list[Path]:
    """``--list --png FILE``: Optuna's own pictures of the study (optuna.visualization.matplotlib): each trial's value
    and the best so far, each searched setting against the metric, and each searched key's importance, drawn from
    the study the importances table comes from (cifarlab.experiments.insight: the same figures; no picture, and a
    note, where it has none); the files written (:func:`picture_files`), in the format FILE's ending picks."""
    assert sweep.search is not None
    with reading(sweep) as study:
        if study is None:
            raise UsageError(f"--png: search {sweep.name} has not started ({typed(sweep.dir.journal)} does not exist)")
        if not _count(study, "COMPLETE"):
            raise UsageError(f"--png: search {sweep.name} has no completed trial yet: nothing to draw")
        return _draw(sweep, study, objective(sweep), picture_files(path))


def _retitle(ax: Any, title: str) -> None:
    """Optuna's title (on whichever side it is) replaced by ``title``, naming the search."""
    for side in ("left", "right"):
        ax.set_title("", loc=side)
    ax.set_title(title)


def _plain_log(axis: Any) -> None:
    """A log axis labelled 0.01, 0.02, 0.05, 0.1 (1, 2, 5 a decade; 1 a decade over more than 2): Optuna's, within a
    decade or two, labels every minor tick in scientific notation, one over the other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = axis.get_view_interval()
    axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if high > 100 * low else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _shown(trial: Any, scale: float) -> float:
    return float(trial.value) * scale


def _draw(sweep: Sweep, study: Any, goal: Objective, paths: list[Path]) -> list[Path]:
    import warnings

    from matplotlib.ticker import FuncFormatter
    from optuna.visualization import matplotlib as plots

    from cifarlab.report import console, figures

    assert sweep.search is not None
    metric = goal.metric
    weighed, why_not = insight.weighed(goal, insight.completed(study, sweep.search))
    with figures.pyplot() as pyplot, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The history's best-so-far line needs the study's own values (a target hides it): the axis shows them as
        # compare does (accuracies in %).
        history = plots.plot_optimization_history(study, target_name=metric.title)
        history.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value * metric.scale:g}"))
        _retitle(history, f"Optimization history of {sweep.name} (completed trials)")
        pictures = [pyplot.gcf()]
        plots.plot_slice(study, target=lambda trial: _shown(trial, metric.scale), target_name=metric.title)
        pyplot.suptitle(f"Slice plot of {sweep.name} (completed trials)")
        pictures.append(pyplot.gcf())
        pictures[-1].set_size_inches(1.2 + 3.2 * len(sweep.search.space), 4.8)  # Optuna's: 6.4 for any number
        for ax in pictures[-1].axes:
            if ax.get_xscale() == "log":
                _plain_log(ax.xaxis)
        if weighed is not None and goal.space is not None:
            # The study's own values and direction (with a target, PED-ANOVA would take lower to be better).
            plots.plot_param_importances(weighed, evaluator=insight.evaluator(), params=list(goal.space),
                                         target_name=metric.name)
            _retitle(pyplot.gca(), f"Hyperparameter importances in {sweep.name} (PED-ANOVA)")
            pictures.append(pyplot.gcf())
        for picture, file in zip(pictures, paths):
            figures.save(picture, file, tight=True)
    for warning in caught:  # what Optuna says of the study (too few trials to tell importances apart, say)
        if warning.category is UserWarning:  # not its ExperimentalWarning, nor a library's deprecations
            console.note(f"Optuna: {warning.message}")
    if weighed is None:
        console.note(f"no picture of the importances: {why_not}")
    return paths[:len(pictures)]
