"""A search's study: Optuna's journal file ``<sweep folder>/search.journal``, shared by every worker (local ones,
SLURM array tasks, on any host that sees the folder), and the feed that gives a :class:`Runner` its trials.

A worker takes, in this order: a trial another worker left unfinished (it died: SIGKILL, preemption, node loss),
resumed from its checkpoint; else a new trial sampled by the study, while fewer than ``trials`` are completed,
pruned or running. A trial is worked on by one worker at a time: the worker holds a lock on
``claims/<trial>.lock`` (a POSIX lock, dropped by the kernel when the worker dies), and a trial whose trainer
still holds its run lock (cifarlab.run.runlock) is left alone. The worker alone tells the study how its trials
ended: a trial killed with its worker stays "running" in the study until a later worker resumes and ends it, so the
study ends with exactly ``trials`` completed or pruned, none run twice. Failed trials do not count; once as many
have failed as were asked for, no more are sampled."""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from cifarlab import files
from cifarlab.analysis.results import read_run
from cifarlab.analysis.sweepdir import SweepDir, trial_name
from cifarlab.config import load_config, refuse_resolvers, shown
from cifarlab.errors import UsageError
from cifarlab.experiments import space
from cifarlab.experiments.record import Trial
from cifarlab.experiments.runner import Feed, finished, say, write_whole
from cifarlab.experiments.spec import Sweep, identity, setting
from cifarlab.identity import VOLATILE
from cifarlab.run import pruning
from cifarlab.run.rundir import RunDir

ASKING_S = 60.0
"""A running trial with no claim file for this long lost its worker between sampling it and claiming it."""
QUIET_S = 2.0
"""How long a worker with free slots waits before asking the study again (while its other trials run)."""


def open_study(sweep: Sweep) -> Any:
    """The sweep's study, created on first use; refused when the folder's study searches another space, metric or
    direction, or another base configuration."""
    pruning.require()  # before anything is written
    import optuna

    assert sweep.search is not None
    path = sweep.dir.journal
    try:
        sweep.dir.claims.mkdir(parents=True, exist_ok=True)
        storage = pruning.journal(str(path))
        study = optuna.create_study(study_name=sweep.name, storage=storage, load_if_exists=True,
                                    direction=optuna.study.StudyDirection.MAXIMIZE if sweep.search.maximize
                                    else optuna.study.StudyDirection.MINIMIZE)
    except OSError as error:
        raise UsageError(f"cannot write the study {files.typed(path)} ({error.strerror}); choose a writable "
                         f"train.output_dir") from None
    if not _same_search(sweep, study, path):
        study.set_user_attr("search", _ours(sweep))
    _describe(sweep)
    return study


def _describe(sweep: Sweep) -> None:
    """``search.yaml`` (SweepDir.description), written whole and renamed into place (never through a link there)."""
    assert sweep.search is not None
    path = sweep.dir.description
    text = "# written by cifarlab.sweep: what this search optimizes (cifarlab.compare reads it)\n" + \
        OmegaConf.to_yaml(OmegaConf.create(sweep.search.identity()))
    try:
        if path.is_symlink() or not path.is_file() or path.read_text() != text:
            write_whole(path, text)
    except OSError as error:
        raise UsageError(f"cannot write {files.typed(path)} ({error.strerror}); choose a writable "
                         f"train.output_dir") from None


@contextmanager
def reading(sweep: Sweep) -> Iterator[Optional[Any]]:
    """The study as it is now, for ``--list`` and ``--best``, read from a copy of its journal: nothing in the folder
    is written (opening the journal itself appends to it and takes Optuna's lock file), so a read-only folder, a
    colleague's, works. None before the search first ran; refused as :func:`open_study` refuses."""
    path = sweep.dir.journal
    if not path.is_file():
        yield None
        return
    pruning.require()
    import optuna

    with tempfile.TemporaryDirectory(prefix="cifarlab-study-") as scratch:
        copy = Path(scratch) / sweep.dir.journal.name
        shutil.copyfile(path, copy)  # a line a worker is appending meanwhile is torn: Optuna's reader leaves it out
        try:
            study = optuna.load_study(study_name=sweep.name, storage=pruning.journal(str(path), str(copy)))
        except KeyError:
            raise UsageError(f"{files.typed(path)} holds no study named {sweep.name}; move "
                             f"{files.typed(sweep.folder)} away") from None
        _same_search(sweep, study, path)
        yield study


def _ours(sweep: Sweep) -> dict[str, Any]:
    assert sweep.search is not None
    return {**sweep.search.identity(), "base": _experiment(sweep)}


def _same_search(sweep: Sweep, study: Any, path: Path) -> bool:
    """Whether the study says which search it is (a new one does not yet); refused when it is another search."""
    ours, there = _ours(sweep), study.user_attrs.get("search")
    if there is None:
        return False
    changed = [key for key in ours if key != "base" and there.get(key) != ours[key]]
    base = there.get("base") if isinstance(there.get("base"), dict) else {}
    changed += [f"{key} ({shown(base.get(key))} there, {shown(ours['base'].get(key))} here)"
                for key in sorted(set(base) | set(ours["base"])) if base.get(key) != ours["base"].get(key)]
    if changed:
        raise UsageError(f"{files.typed(path)} is the study of another search (its {changed[0]} differs from "
                         f"{sweep.source}'s); give this search another name: or move {files.typed(sweep.folder)} away")
    return True


def _experiment(sweep: Sweep) -> dict[str, Any]:
    """The base configuration (with the overrides) as the trainer's identity rule sees it: where the data lives,
    logging and checkpointing aside (cifarlab.identity.VOLATILE), so another host or W&B mode is the same search."""
    settings = json.loads(identity(load_config(sweep.base, list(sweep.common))))
    return {key: value for key, value in settings.items() if not key.startswith(VOLATILE)}


class StudyFeed(Feed):
    """The study's trials for a :class:`Runner` (see the module docstring)."""

    def __init__(self, sweep: Sweep, study: Any) -> None:
        super().__init__()
        assert sweep.search is not None
        self.sweep, self.search, self.study = sweep, sweep.search, study
        self.study.sampler = space.sampler(self.search)
        self.claims = Claims(sweep.dir)
        self.quiet_until = 0.0
        self.orphans: set[int] = set()
        """Trials whose worker has gone while their trainer runs on (see :meth:`_orphaned`)."""

    def take(self) -> Optional[Trial]:
        if time.monotonic() < self.quiet_until:
            return None
        while (picked := self._pick()) is not None:
            number, params = picked
            try:
                return self._trial(number, params)
            except UsageError as error:  # each range's ends load, but not these settings together
                self._tell(number, None, f"its settings do not load ({error})")
        self.quiet_until = time.monotonic() + QUIET_S
        return None

    def _pick(self) -> Optional[tuple[int, dict[str, Any]]]:
        """A trial whose worker has gone, else a new one while the study needs one: its number and settings."""
        import optuna

        trials = self.study.get_trials(deepcopy=False)
        self.orphans &= {t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING}
        for frozen in trials:
            if frozen.state == optuna.trial.TrialState.RUNNING and self._adopt(frozen):
                return frozen.number, frozen.params
        states = [t.state for t in trials]
        done = states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED)
        running = states.count(optuna.trial.TrialState.RUNNING)
        if done + running >= self.search.trials or states.count(optuna.trial.TrialState.FAIL) >= self.search.trials:
            return None
        asked = self.study.ask()
        self.claims.claim(trial_name(asked.number), new=True)
        return asked.number, space.suggest(self.search, asked)

    def _adopt(self, frozen: Any) -> bool:
        """Claim a running trial whose worker has gone (its claim lock is free), unless its trainer still runs."""
        name = trial_name(frozen.number)
        started = frozen.datetime_start.timestamp() if frozen.datetime_start else 0.0
        if not self.claims.path(name).exists() and time.time() - started < ASKING_S:
            return False  # just sampled: its worker is about to claim it
        if not self.claims.claim(name):
            self.orphans.discard(frozen.number)  # another worker has it
            return False
        if _locked(run_dir(self.sweep, frozen.number).lock):
            self.claims.release(name)
            self._orphaned(frozen.number)
            return False
        if set(frozen.params) != {p.key for p in self.search.space}:  # its worker died while sampling it
            self._tell(frozen.number, None, "it lost its worker before its settings were sampled")
            return False
        self.orphans.discard(frozen.number)
        say(self.sweep, f"trial {frozen.number} {trial_name(frozen.number)}: its worker has gone; taking it over")
        return True

    def _orphaned(self, number: int) -> None:
        """The trial's worker has gone but its trainer runs on (one that was still starting when its worker died
        does not get the SIGTERM that stops the others): it ends the trial's run, and this worker records it."""
        if number not in self.orphans:
            say(self.sweep, f"trial {number} {trial_name(number)}: its worker has gone but its trainer still runs; "
                            f"waiting for it to end")
        self.orphans.add(number)

    def waiting(self) -> bool:
        return bool(self.orphans)

    def _trial(self, number: int, params: dict[str, Any]) -> Trial:
        return sampled_trial(self.sweep, number, params)

    def environment(self, trial: Trial) -> dict[str, str]:
        order = {"journal": str(self.sweep.dir.journal.resolve()), "study": self.sweep.name,
                 "trial": trial.index, "pruning": self.search.pruning,
                 "report": space.EVALUATED.get(self.search.metric, "test/acc")}
        return {pruning.VARIABLE: json.dumps(order)}

    def left(self) -> int:
        import optuna

        ended = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                               optuna.trial.TrialState.PRUNED))
        return max(0, self.search.trials - len(ended))

    def ended(self, trial: Trial, result: str) -> None:
        self.quiet_until = 0.0
        run = self.sweep.run_dir(trial)
        if result in ("failed", "refused") and _locked(run.lock):  # its trainer refused: another holds the run
            self.claims.release(trial.name)
            self._orphaned(trial.index)
            return
        if result == "failed" and finished(self.sweep, trial):  # ... and has finished it meanwhile
            result = "skipped"
        if result in ("finished", "skipped"):
            found = read_run(run.root)
            value = space.metric(self.search).read(found)
            if found.pruned is not None:
                self._tell(trial.index, "pruned", f"pruned at epoch {found.pruned['prune/epoch']}")
            elif value is None or not math.isfinite(value):
                self._tell(trial.index, None, f"its run has no {self.search.metric}")
            else:
                self._tell(trial.index, value, space.metric(self.search).with_unit(value))
        elif result in ("failed", "refused"):
            self._tell(trial.index, None, result)
        else:  # stopped: it stays running in the study, for the next worker to resume
            self.claims.release(trial.name)

    def _tell(self, number: int, value: Optional[float | str], note: str) -> None:
        import optuna

        if value == "pruned":
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        elif value is None:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        else:
            self.study.tell(number, float(value), skip_if_finished=True)
        self.claims.release(trial_name(number))
        say(self.sweep, f"trial {number} {trial_name(number)}: {note}; {progress(self.sweep, self.study)}")


class Claims:
    """Locks on ``<sweep folder>/claims/<name>.lock``, one per trial a worker works on (see the module docstring)."""

    def __init__(self, sweep: SweepDir) -> None:
        self.sweep = sweep
        self.folder = sweep.claims
        self.held: dict[str, int] = {}  # name -> the claim file's descriptor (holding its lock)

    def claim(self, name: str, new: bool = False) -> bool:
        """Lock the trial's claim file; False when another worker holds it. A new trial's file is locked under a
        name of its own and then renamed into place, so that nobody can lock it in between."""
        if name in self.held:
            return False
        path = self.path(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        if new:
            descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.folder)
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            files.publish(temporary, path)  # mkstemp's 0600 would lock a colleague's worker out of the claim
        else:
            try:  # a link planted in claims/ is not followed: its target is nobody's claim
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except OSError as error:
                if error.errno != errno.ELOOP:
                    raise
                raise UsageError(f"{files.typed(path)} is a symbolic link, not a claim cifarlab made; remove "
                                 f"it") from None
            try:
                fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(descriptor)
                return False
        self.held[name] = descriptor
        return True

    def path(self, name: str) -> Path:
        return self.sweep.claim(name)

    def release(self, name: str) -> None:
        descriptor = self.held.pop(name, None)
        if descriptor is not None:
            os.close(descriptor)


class ClaimFeed(Feed):
    """A list of trials shared by several workers: each takes the next one nobody else holds (a search's
    confirmation runs, cifarlab.experiments.searching)."""

    def __init__(self, trials: list[Trial], claims: Claims) -> None:
        super().__init__(trials)
        self.claims = claims

    def take(self) -> Optional[Trial]:
        while self.queue:
            trial = self.queue.pop(0)
            if self.claims.claim(trial.name):
                return trial
        return None

    def ended(self, trial: Trial, result: str) -> None:
        self.claims.release(trial.name)


def _locked(lock: Path) -> bool:
    """Whether a trainer holds this run lock (tried and, if free, let go at once)."""
    if not lock.is_file():
        return False
    descriptor = os.open(lock, os.O_RDWR)
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(descriptor)


def progress(sweep: Sweep, study: Any) -> str:
    """``7/20 trials done (2 pruned, 1 failed); best 61.20 % (trial 3)``."""
    import optuna

    assert sweep.search is not None
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    done = count[optuna.trial.TrialState.COMPLETE] + count[optuna.trial.TrialState.PRUNED]
    text = (f"{done}/{sweep.search.trials} trials done ({count[optuna.trial.TrialState.PRUNED]} pruned, "
            f"{count[optuna.trial.TrialState.FAIL]} failed)")
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = (max if sweep.search.maximize else min)(complete, key=lambda t: t.value)
        text += f"; best {space.metric(sweep.search).with_unit(best.value)} (trial {best.number})"
    return text


def sampled_trial(sweep: Sweep, number: int, params: dict[str, Any]) -> Trial:
    """Trial ``number`` with its sampled settings (rounded as it trains), its config loaded into ``sweep.configs``."""
    assert sweep.search is not None
    chosen = space.settings(sweep.search, params)
    trial = Trial(number, trial_name(number), tuple(setting(key, value) for key, value in chosen.items()))
    refuse_resolvers(chosen, str(sweep.dir.journal))  # values read back from the journal
    sweep.configs[number] = load_config(sweep.base, sweep.overrides(trial))
    return trial


def run_dir(sweep: Sweep, number: int) -> RunDir:
    return sweep.run_dir(Trial(number, trial_name(number), ()))
