"""What a search teaches: how much each searched key matters to its metric, by Optuna's importance evaluator, over
the search's completed trials; for ``cifarlab.sweep SEARCH.yaml --list``, ``cifarlab.compare <search folder>`` and
the search's W&B summary run, so a user sees which knob matters before spending seeds on it.

Both commands build one in-memory study from the same inputs: each completed trial's settings as it trained
(rounded as cifarlab.experiments.space.settings rounds them: what its config.yaml says) and its value, with the space
and direction from the folder's search.yaml. The evaluator is deterministic, so the figures repeat exactly, call after
call, and --list and compare print the same figures for one folder. Optuna is imported here only, and late: compare
on a run or grid folder never imports this module."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from cifarlab.analysis.searchview import Objective
from cifarlab.analysis.sweepdir import trial_name
from cifarlab.config import load_config
from cifarlab.experiments import space
from cifarlab.experiments.record import Trial
from cifarlab.run import pruning

if TYPE_CHECKING:  # compare imports this module for a search folder: not the runner, nor the sweep file's reader
    from cifarlab.experiments.spec import Sweep

EVALUATOR = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator(); deterministic)"
"""The evaluator, as the output names it. Not fANOVA: its random forest needs scikit-learn, which the [search] extra
does not bring. PED-ANOVA weighs how much each key's values set the best 10 % of trials apart from the whole space."""
STEADY = 50
"""Completed trials below which PED-ANOVA's top 10 % holds under 5 trials, fewer than its authors advise: a hint."""


@dataclass(frozen=True)
class Importances:
    """Each searched key's share of the importance (summing to 1), most important first; empty where ``why_not``
    says why none were computed."""

    trials: int
    """Completed trials they come from."""
    shares: dict[str, float] = field(default_factory=dict)
    why_not: Optional[str] = None


def importances(goal: Objective, completed: Sequence[tuple[dict[str, Any], float]]) -> Importances:
    """The importances of the searched keys (``goal.space``, as search.yaml has it) for ``goal``'s metric over
    ``completed`` (each trial's settings as it trained and its value). Fewer than 2 trials, or one key, give a reason
    instead."""
    study, why_not = weighed(goal, completed)
    if study is None or goal.space is None:
        return Importances(len(completed), why_not=why_not)
    import optuna

    with warnings.catch_warnings():  # PED-ANOVA warns where its top 10 % is small: lines() says so itself
        warnings.simplefilter("ignore")
        shares = optuna.importance.get_param_importances(study, evaluator=evaluator(), params=list(goal.space))
    return Importances(len(completed), {key: float(share) for key, share in shares.items()})


def weighed(goal: Objective, completed: Sequence[tuple[dict[str, Any], float]]) -> tuple[Optional[Any], str]:
    """The study the importances are computed on, in memory (the searched keys' settings as the trials trained,
    their values, the search's direction; the picture of sweep --list --png draws it too); or None and why none."""
    if goal.space is None:
        return None, "the folder does not say its space (no search.yaml)"
    keys = list(goal.space)
    if len(keys) < 2:
        return None, f"one searched key ({keys[0]}): nothing to weigh it against"
    if len(completed) < 2:
        return None, f"{len(completed)} completed trial(s); importances need 2 or more"
    pruning.require()  # and Optuna's INFO lines ("A new study created in memory") stay off the console
    import optuna

    kinds = space.distributions(space.read_space(goal.space, "search.yaml: search"))
    study = optuna.create_study(direction="maximize" if goal.maximize else "minimize")  # in memory: nothing written
    try:
        study.add_trials([optuna.trial.create_trial(params={key: settings[key] for key in keys}, distributions=kinds,
                                                    value=value) for settings, value in completed])
    except ValueError as error:  # a run trained with a value outside the space (an edited config.yaml)
        return None, f"a trial's settings are outside the space ({error})"
    return study, ""


def evaluator() -> Any:
    """The importance evaluator (:data:`EVALUATOR` names it), the table's and the picture's."""
    import optuna

    return optuna.importance.PedAnovaImportanceEvaluator()


def of_study(study: Any, goal: Objective, search: space.Search) -> Importances:
    """For ``--list``: the study's completed trials, their settings rounded as they trained (``search``: the sweep
    file's, which cifarlab.experiments.searching.objective has found equal to the folder's)."""
    return importances(goal, completed(study, search))


def completed(study: Any, search: space.Search) -> list[tuple[dict[str, Any], float]]:
    """The study's completed trials: each one's settings rounded as it trained, and its value."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [(space.settings(search, t.params), t.value) for t in complete]


def lines(found: Importances, goal: Objective) -> list[str]:
    """The importances as text: a heading that names the evaluator, then one line a key (or one line why none)."""
    if found.why_not is not None:
        return [f"importance of the searched keys: none: {found.why_not}"]
    width = max(len(key) for key in found.shares)
    return [f"importance of each searched key for {goal.metric.name} (shares of 1) over {found.trials} completed "
            f"trials, by {EVALUATOR}:", *(f"  {key:<{width}}  {share:.3f}" for key, share in found.shares.items()),
            *([f"  only {found.trials} completed trials (its top 10 % holds under 5 of them): a hint, firmer from "
               f"{STEADY}"] if found.trials < STEADY else [])]


def missing() -> Optional[str]:
    """Why no importances can be computed here (no Optuna: compare works without the [search] extra), or None."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        return f"the searched keys' importances need Optuna, an optional extra: {pruning.INSTALL}"
    return None


# --- the search's W&B summary run ----------------------------------------------------------------------------

SUMMARY = "search-summary"
"""The summary run's W&B job type; its name is ``<search>-summary``."""


def log_summary(sweep: Sweep, study: Any, goal: Objective, best: Optional[Any]) -> Optional[str]:
    """When the search has its trials and its trials log to W&B: one W&B run in their group (``<search>-summary``,
    job type search-summary; its files under the folder's wandb/) with a table of the importances (key, importance,
    evaluator) and, in its summary, the best trial (``best``, unconfirmed) with its settings. Every worker that ends
    the search logs it under one run id (the folder's and the study's), so W&B shows one run, its last state. The
    line to say where it went, or why not (a failure of W&B's never fails the search: its trials are done and
    recorded); None without W&B."""
    assert sweep.search is not None
    config = load_config(sweep.base, sweep.overrides(Trial(-1, f"{sweep.name}-summary", ()))).logging.wandb
    if config.mode == "disabled":  # the trials' W&B settings, group included (spec.Sweep.overrides)
        return None
    from cifarlab.run.tracking import wandb_mode, where  # Accelerate and torch: only for a search that logs to W&B

    mode = wandb_mode(config)
    found = of_study(study, goal, sweep.search)
    first = min((t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start), default=None)
    digest = hashlib.sha256(f"{sweep.folder.resolve()} {first}".encode()).hexdigest()[:16]
    try:
        import wandb

        options: dict[str, Any] = {"mode": mode, "id": f"search-{digest}", "resume": "allow"}  # mode: a str
        run = wandb.init(project=config.project, entity=config.entity, group=config.group, job_type=SUMMARY,
                         name=f"{sweep.name}-summary", dir=str(sweep.dir.root), tags=list(config.tags) or None,
                         notes=config.notes, config={"search": {"space": goal.space, "metric": goal.metric.name,
                                                                 "maximize": goal.maximize}},
                         settings=wandb.Settings(silent=True), **options)
        rows = [[key, share, EVALUATOR] for key, share in found.shares.items()]
        run.log({"search/importance": wandb.Table(columns=["key", "importance", "evaluator"], data=rows)})
        run.summary.update({"search/importance_note": found.why_not or "", "search/completed": found.trials})
        if best is not None:
            run.summary.update({"search/best_trial": trial_name(best.number), "search/best_value": best.value,
                                **{f"search/best/{key}": value
                                   for key, value in space.settings(sweep.search, best.params).items()}})
        logged = where(run)
        run.finish()
    except Exception as error:  # wandb's own errors (offline disk, online network) have no common base class
        return f"the search's W&B summary run was not logged ({type(error).__name__}: {error})"
    return f"the importances and the best trial logged to W&B: {logged}"
