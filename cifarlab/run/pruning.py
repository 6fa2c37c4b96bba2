"""Pruning a search's trial at the trainer's evaluations: after each evaluation the main process reports the
search's figure for the epoch to the study (Optuna's journal file) and asks its pruner whether to stop; every rank
gets the answer, and a pruned run finishes there, as one that reached ``train.target_accuracy`` does.

A trainer prunes only when a search started it: the sweep sets ``CIFARLAB_SEARCH`` (JSON: the journal, the study,
the trial's number, the pruner and the figure to report; cifarlab.experiments.study). Optuna is imported then
and only then. The decision is saved in the checkpoint (``TrainState.pruned``), so a resumed trial does not ask
again about an epoch it has passed."""

from __future__ import annotations

import json
import os
import warnings
from typing import TYPE_CHECKING, Any, Optional

from cifarlab import files
from cifarlab.errors import UsageError

if TYPE_CHECKING:  # the sweep imports this module for the pruners' names: no torch, no Accelerate at import
    import optuna
    from accelerate import Accelerator

    from cifarlab.run.state import TrainState

VARIABLE = "CIFARLAB_SEARCH"
PRUNERS = ("none", "median", "asha", "wilcoxon")
INSTALL = 'pip install -e ".[search]"'


class Pruning:
    """The trial's link to its study (main process); :meth:`check` on every rank after an evaluation."""

    def __init__(self, accelerator: Accelerator, order: dict[str, Any]) -> None:
        self.accelerator = accelerator
        self.report_key = str(order["report"])
        self.trial: Any = None
        if accelerator.is_main_process and order.get("pruning", "none") != "none":
            self.trial = _attach(order)

    @classmethod
    def from_environment(cls, accelerator: Accelerator) -> Optional[Pruning]:
        text = os.environ.get(VARIABLE)
        if not text:
            return None
        try:
            order = json.loads(text)
            return cls(accelerator, order) if order.get("pruning", "none") != "none" else None
        except (ValueError, KeyError, AttributeError) as error:
            raise UsageError(f"{VARIABLE}={text!r} is not what cifarlab.sweep sets ({error}); unset it") from None

    def stops(self, state: TrainState, figures: dict[str, Any], epochs: int) -> bool:
        """After the evaluation of the epoch ``state`` has just ended: report its figure and ask the pruner (every
        rank gets the answer). True when the run stops here, before its last epoch: ``state.pruned`` says where."""
        if self._pruned(state.epoch, figures) and state.epoch < epochs:
            state.pruned = {"prune/epoch": state.epoch, "prune/step": state.global_step,
                            "prune/elapsed_s": round(state.wall.read(), 3)}
        return state.pruned is not None

    def _pruned(self, epoch: int, figures: dict[str, Any]) -> bool:
        verdict = [False]
        if self.trial is not None and figures.get(self.report_key) is not None:
            with warnings.catch_warnings():  # a resumed trial reports an epoch again: Optuna keeps the first
                warnings.simplefilter("ignore")
                self.trial.report(float(figures[self.report_key]), step=epoch)
                verdict[0] = bool(self.trial.should_prune())
        if self.accelerator.num_processes > 1:  # one process has nobody to tell (and needs no torch for it)
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(verdict)
        return bool(verdict[0])


def _attach(order: dict[str, Any]) -> Any:
    """The study's trial ``order["trial"]``, as Optuna's own ask() builds it, with the search's pruner. A journal
    that no longer holds them (replaced or damaged since the sweep started the trial) is one UsageError line."""
    import optuna

    path, name, number = str(order["journal"]), str(order["study"]), int(order["trial"])
    storage = journal(path)
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                                  pruner=pruner(str(order["pruning"])))
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    except KeyError:  # Optuna's answer to a study or a trial number it does not hold
        raise UsageError(f"{files.typed(path)} holds no trial {number} of a study named {name} (replaced or cut "
                         f"short since the sweep started this trial); run the search again") from None
    return optuna.trial.Trial(study, trial_id)


def require() -> None:
    """Optuna is an optional extra: without it, one line that says how to install it."""
    try:
        import optuna
    except ImportError:
        raise UsageError(f"a search needs Optuna, an optional extra: {INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def journal(path: str, copy: Optional[str] = None) -> optuna.storages.JournalStorage:
    """Optuna's file journal at ``path`` (read from ``copy``, a snapshot of it, where given): every worker and trainer
    appends under its lock file, which works on NFS; a lock left by a process killed while writing is broken after
    30 s (Optuna >= 4.3). Optuna replays the journal at once: a damaged one (a stray write, a line cut short before
    others) is one UsageError line, not whatever its replay meets there (a JSONDecodeError, UnicodeDecodeError,
    KeyError, TypeError or AssertionError), for the sweep and for a trainer that prunes alike."""
    require()
    source = copy or path
    files.refuse_link(source)  # Optuna appends to the file it names: never through a link someone planted there
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    try:
        return optuna.storages.JournalStorage(JournalFileBackend(source, lock_obj=JournalFileOpenLock(
            source, grace_period=30)))
    except OSError:
        raise  # the callers say what they could not write or read
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else ""
        raise UsageError(f"{files.typed(path)}: not a study journal Optuna can read ({type(error).__name__}: "
                         f"{reason}); it is damaged: restore it, or move {files.typed(os.path.dirname(path) or '.')} "
                         f"away to start the search again") from None


def pruner(name: str) -> optuna.pruners.BasePruner:
    """median: below the median of earlier trials at the same epoch (after 5 trials); asha: asynchronous successive
    halving (a third go on at each rung); wilcoxon: a paired signed-rank test of the trial's curve against the
    best trial's, epoch by epoch (p < 0.1, so from the 4th epoch on: with n pairs p is at least 2^-n); none: never."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "wilcoxon":
        with warnings.catch_warnings():  # "experimental" since Optuna 3.6: the interface is what we use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    return optuna.pruners.NopPruner()
