"""cifarlab.sweep with a search: section: the section checked before anything runs, claims that die with their
worker, a trial pruned at an evaluation by its study, and 20-trial searches that survive SIGKILLs of workers,
of the whole command and of SLURM array tasks, ending with exactly 20 trials, none run twice, the interrupted ones
resumed from their checkpoints, then confirmed on fresh seeds."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import psutil
import pytest
import test_slurm
import yaml

from cifarlab import compare
from cifarlab import sweep as sweeps
from cifarlab import train as trainer_command
from cifarlab.analysis.sweepdir import SweepDir, trial_name
from cifarlab.config import load_config, to_yaml
from cifarlab.errors import UsageError
from cifarlab.experiments import searching, space
from cifarlab.experiments import study as study_module
from cifarlab.experiments.record import Trial
from cifarlab.experiments.spec import read_sweep
from cifarlab.experiments.study import Claims, StudyFeed, open_study, run_dir
from cifarlab.run import loop, pruning
from cifarlab.run.rundir import RunDir
from cifarlab.run.runlock import RunLock

from conftest import CONFIGS, FAKE_TRAINER, REPO, Background, check, cli_env, launch_command, records, wait_until

optuna = pytest.importorskip("optuna")  # the [search] extra; `pip install -e ".[test]"` brings it too

SMOKE = str(CONFIGS / "smoke.yaml")
# 256 fake images in batches of 32: 8 steps an epoch, 3 epochs, a checkpoint every 4 steps; seconds per trial.
TRIAL = ["data.name=fake", "data.train_size=256", "data.test_size=64", "train.batch_size=32", "train.epochs=3",
         "checkpoint.every_n_steps=4", "logging.every_n_steps=4", "logging.wandb.mode=disabled", "model.name=lenet"]
SPACE = {"optim.lr": {"log_uniform": [1.0e-3, 1.0]}, "optim.weight_decay": {"log_uniform": [1.0e-5, 1.0e-2]}}
SWEEP = [sys.executable, "-m", "cifarlab.sweep"]
slurm_env = test_slurm.slurm_env  # the fixture: a running SLURM's environment, else the test skips


def write(folder: Path, search: dict[str, Any], **extra: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": "search", "base": SMOKE, "overrides": TRIAL, "search": search, **extra}
    (folder / "search.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "search.yaml"


# --- the search: section, checked ---------------------------------------------------------------------------

BAD = {
    "unknown key": ({"space": SPACE, "trails": 3}, {}, "search: unknown key 'trails'"),
    "no space": ({"trials": 3}, {}, "space must be a non-empty mapping"),
    "unknown kind": ({"space": {"optim.lr": {"loguniform": [0.1, 1]}}}, {}, "must be one of {log_uniform: ...}"),
    "log of zero": ({"space": {"optim.lr": {"log_uniform": [0, 1]}}}, {}, "needs low > 0"),
    "low above high": ({"space": {"optim.lr": {"uniform": [1, 0.1]}}}, {}, "with low < high"),
    "int of floats": ({"space": {"train.epochs": {"int": [1, 2.5]}}}, {}, "must be two integers"),
    "choice repeated": ({"space": {"model.name": {"choice": ["lenet", "lenet"]}}}, {}, "repeats a value"),
    "unknown config key": ({"space": {"optim.lrr": {"uniform": [0.1, 1]}}}, {}, "unknown config key 'optim.lrr'"),
    "bad value at an end": ({"space": {"optim.lr": {"uniform": [-1, 1]}}}, {}, "search space optim.lr=-1"),
    "bad choice": ({"space": {"optim.schedule": {"choice": ["cosine", "wobbly"]}}}, {}, "optim.schedule='wobbly'"),
    "searched and set": ({"space": {"train.epochs": {"int": [1, 3]}}}, {},
                         "train.epochs is searched; it cannot also be set in overrides"),
    "with a grid": ({"space": SPACE}, {"grid": {"train.seed": [0, 1]}}, "search samples the trials; remove grid:"),
    "unknown metric": ({"space": SPACE, "metric": "accuracy"}, {}, "metric: 'accuracy' is not one of final_acc"),
    "validation metric without a split": ({"space": SPACE, "metric": "val_acc"}, {},
                                          "metric: val_acc reads the validation split, and the base configuration "
                                          "holds none out; set data.val_size"),
    "pruning a time": ({"space": SPACE, "metric": "time_to_target", "pruning": "median"}, {},
                       "time_to_target has no figure there"),
    "unknown pruner": ({"space": SPACE, "pruning": "hyperband"}, {}, "pruning: 'hyperband' is not one of none"),
    "no trials": ({"space": SPACE, "trials": 0}, {}, "trials: 0 must be at least 1"),
    "confirm on one seed": ({"space": SPACE, "confirm": {"top": 2, "seeds": 1}}, {}, "at least 2 seeds"),
    "confirm misspelt": ({"space": SPACE, "confirm": {"best": 2, "seeds": 3}}, {}, "must be {top: K, seeds: S}"),
    "run name searched": ({"space": {"train.run_name": {"choice": ["a", "b"]}}}, {}, "is set by the sweep"),
    "seed searched": ({"space": {"train.seed": {"int": [0, 9]}}}, {}, "train.seed cannot be searched"),
}


@pytest.mark.unit
@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_search_section_is_one_line_with_exit_2_and_nothing_written(case: str, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    search, extra, expected = BAD[case]
    file = write(tmp_path, search, **extra)
    assert sweeps.main([str(file), f"train.output_dir={tmp_path / 'runs'}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("cifarlab: error: "), captured.err
    assert expected in captured.err
    assert not (tmp_path / "runs").exists()


@pytest.mark.unit
@pytest.mark.parametrize("option, expected", [("--count", "array tasks are its workers"),
                                              ("--dry-run", "samples its trials as it runs"),
                                              ("--until-decided", "is a search")])
def test_options_that_need_a_list_of_trials_say_why_not_for_a_search(option: str, expected: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, {"space": SPACE})
    assert sweeps.main([str(file), option, f"train.output_dir={tmp_path / 'runs'}"]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.unit
def test_without_optuna_a_search_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    file = write(tmp_path, {"space": SPACE})
    assert sweeps.main([str(file), f"train.output_dir={tmp_path / 'runs'}"]) == 2
    assert capsys.readouterr().err == 'cifarlab: error: a search needs Optuna, an optional extra: pip install -e ' \
                                      '".[search]"\n'


@pytest.mark.unit
def test_sampled_values_are_rounded_to_4_digits_and_one_worker_samples_the_same_every_time(tmp_path: Path) -> None:
    search = read_sweep(str(write(tmp_path, {"space": SPACE, "method": "random", "seed": 3}))).search
    assert search is not None
    assert space.settings(search, {"optim.lr": 0.0017376198756776707, "optim.weight_decay": 1e-5}) == \
        {"optim.lr": 0.001738, "optim.weight_decay": 1e-5}

    def sampled() -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=space.sampler(search))
        chosen = []
        for _ in range(4):
            trial = study.ask()
            chosen.append(space.suggest(search, trial))
            study.tell(trial, 0.5)
        return chosen

    first = sampled()
    assert first == sampled() and len({json.dumps(c) for c in first}) == 4


@pytest.mark.unit
def test_rounded_values_stay_inside_their_range_with_4_digits_where_they_can() -> None:
    ema = space.read_search({"space": {"train.ema": {"uniform": [0.99995, 0.99999]}}}, "f")
    rounded = space.settings(ema, {"train.ema": 0.99998713})["train.ema"]
    assert 0.99995 <= rounded <= 0.99999  # 4 digits would give 1.0, which no trial can load
    chance = random.Random(27)
    for _ in range(3000):
        kind = chance.choice(["uniform", "log_uniform", "int"])
        if kind == "int":
            low = chance.randint(-10**chance.randint(0, 18), 10**chance.randint(0, 18))
            high = low + chance.randint(1, 10**chance.randint(0, 18))
            values = [low, high, chance.randint(low, high)]
        else:
            sign = 1 if kind == "log_uniform" or chance.random() < 0.5 else -1
            low = sign * 10 ** chance.uniform(-30, 30) * chance.uniform(1, 10)
            high = low + abs(low) * 10 ** chance.uniform(-15, 3)
            if not low < high:
                continue
            values = [low, high, math.nextafter(low, math.inf), math.nextafter(high, -math.inf),
                      *(chance.uniform(low, high) for _ in range(3))]
        # The rounding of any range, also those read_search refuses as too narrow or wide for Optuna to sample.
        search = space.Search((space.Param("k", kind, (low, high)),))
        for value in values:
            got = space.settings(search, {"k": value})["k"]
            assert low <= got <= high, (kind, low, high, value, got)
            four = float(f"{value:.4g}")
            if kind == "int":
                assert got == value and isinstance(got, int)
            elif low <= four <= high:
                assert got == four
            else:  # the fewest digits that stay inside: one fewer leaves the range
                digits = len(repr(got).split("e")[0].replace("-", "").replace(".", "").strip("0"))
                assert not low <= float(f"{value:.{digits - 1}g}") <= high, (value, got)


@pytest.mark.unit
def test_a_search_whose_every_trial_failed_exits_1_also_when_none_loaded(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Each end loads alone (warmup 1.5 of the preset's 2 epochs; 1 epoch with its 0.5 warmup), no trial together."""
    file = write(tmp_path, {"space": {"optim.warmup_epochs": {"choice": [1.5]}, "train.epochs": {"choice": [1]}},
                            "trials": 2}, overrides=[item for item in TRIAL if not item.startswith("train.epochs=")])
    assert sweeps.main([str(file), f"train.output_dir={tmp_path / 'runs'}"]) == 1
    out = capsys.readouterr().out
    assert out.count("its settings do not load") == 2 and "search done" not in out
    assert "no more trials sampled: 2 failed, as many as trials: asks for" in out
    assert sweeps.main([str(file), f"train.output_dir={tmp_path / 'runs'}"]) == 1  # and again, sampling nothing


def _draws(folder: Path, method: str, together: bool) -> dict[int, dict[str, Any]]:
    """Four trials sampled by two workers' feeds on one journal, two rounds: ``together``, in each round the second
    worker samples while the first is asking (both saw the same trials: what array tasks started at once do),
    else one after another. Each trial is told a value before the next round."""
    sweep = read_sweep(str(write(folder, {"space": SPACE, "method": method, "seed": 3, "trials": 8})),
                       [f"train.output_dir={folder / 'runs'}"])
    first, second = (StudyFeed(sweep, open_study(sweep)) for _ in range(2))
    drawn: dict[int, dict[str, Any]] = {}

    def pick(feed: StudyFeed) -> None:
        picked = feed._pick()
        assert picked is not None
        drawn[picked[0]] = picked[1]

    def tell() -> None:  # (one process holds every claim: a running trial would be adopted by the other feed)
        for number in sorted(drawn):
            for feed in (first, second):
                if trial_name(number) in feed.claims.held:
                    feed._tell(number, number / 10, "told")

    asking = first.study.ask

    def ask_after_the_other(*args: Any, **kwargs: Any) -> Any:
        pick(second)
        return asking(*args, **kwargs)

    for _ in range(2):
        if together:
            setattr(first.study, "ask", ask_after_the_other)  # noqa: B010 - on this object only
            pick(first)
            delattr(first.study, "ask")
        else:
            pick(first)
            tell()
            pick(second)
        tell()
    return drawn


@pytest.mark.unit
@pytest.mark.parametrize("method", ["random", "tpe"])
def test_workers_asking_at_once_draw_their_own_settings_and_a_rerun_draws_them_again(method: str,
                                                                                    tmp_path: Path) -> None:
    together = _draws(tmp_path / "a", method, together=True)
    assert sorted(together) == [0, 1, 2, 3]
    assert len({json.dumps(params, sort_keys=True) for params in together.values()}) == 4  # none drawn twice
    assert _draws(tmp_path / "b", method, together=True) == together  # from the study's seed and trial numbers
    if method == "random":  # each draw is its trial's own: who asked when does not matter
        assert _draws(tmp_path / "c", method, together=False) == together


def _hold(path: str, ready: Any) -> None:
    claims = Claims(SweepDir(Path(path)))
    assert claims.claim("trial-0000", new=True)
    ready.set()
    time.sleep(60)


@pytest.mark.unit
def test_a_claim_excludes_other_workers_until_its_worker_dies(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # a copy of this process at once (spawn re-imports torch: 1.5 s)
    ready = context.Event()
    holder = context.Process(target=_hold, args=(str(tmp_path), ready))
    holder.start()
    assert ready.wait(60)
    claims = Claims(SweepDir(tmp_path))
    assert not claims.claim("trial-0000")  # held by the other worker
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)  # the kernel drops a dead process's POSIX locks
    holder.join()
    assert claims.claim("trial-0000")
    assert not claims.claim("trial-0000")  # this worker holds it already
    claims.release("trial-0000")


@pytest.mark.unit
@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_claim_files_follow_the_umask_and_a_planted_link_is_refused(mask: int, tmp_path: Path) -> None:
    """A colleague's worker on a shared study opens the claim files this worker made (0600 before: PermissionError)."""
    previous = os.umask(mask)
    try:
        claims = Claims(SweepDir(tmp_path))
        assert claims.claim("trial-0000", new=True) and claims.claim("trial-0001")
        for name in ("trial-0000", "trial-0001"):
            assert stat.S_IMODE(claims.path(name).stat().st_mode) == 0o666 & ~mask
        assert not list(claims.folder.glob(".*"))  # no temporary file left
        (tmp_path / "elsewhere").write_text("someone's file\n")
        claims.path("trial-0002").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(UsageError, match=r"claims/trial-0002.lock is a symbolic link"):
            claims.claim("trial-0002")
        assert (tmp_path / "elsewhere").read_text() == "someone's file\n"
    finally:
        os.umask(previous)
        for name in list(claims.held):
            claims.release(name)


@pytest.mark.unit
def test_a_link_planted_as_a_trials_log_is_not_written_through(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    file = write(tmp_path, {"space": SPACE, "trials": 1})
    logs = tmp_path / "runs" / "search" / "logs"
    logs.mkdir(parents=True)
    (tmp_path / "elsewhere").write_text("someone's file\n")
    (logs / "trial-0000.log").symlink_to(tmp_path / "elsewhere")
    assert sweeps.main([str(file), f"train.output_dir={tmp_path / 'runs'}"]) == 1  # its one trial refused
    assert f"refused: its log {logs / 'trial-0000.log'} is a symbolic link" in capsys.readouterr().out
    assert (tmp_path / "elsewhere").read_text() == "someone's file\n"


def doomed_trial(tmp_path: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
    """A study whose five trials did far better at every epoch than fake data allows, and a sixth trial asked of
    it: its sweep, the study, the trial and what the sweep would tell its trainer (CIFARLAB_SEARCH)."""
    file = write(tmp_path, {"space": {"optim.lr": {"uniform": [0.01, 0.1]}}, "pruning": "median"})
    sweep = read_sweep(str(file), [f"train.output_dir={tmp_path / 'runs'}"])
    study = open_study(sweep)
    for _ in range(5):  # five earlier trials, far better at every epoch than fake data allows
        earlier = study.ask()
        earlier.suggest_float("optim.lr", 0.01, 0.1)
        for epoch in (1, 2, 3):
            earlier.report(0.95, epoch)
        study.tell(earlier, 0.95)
    trial = study.ask()
    trial.suggest_float("optim.lr", 0.01, 0.1)
    order = {"journal": str(sweep.dir.journal), "study": sweep.name, "trial": trial.number,
             "pruning": "median", "report": "test/acc"}
    return sweep, study, trial, order


def _hold_run_lock(path: str, ready: Any, release: Any) -> None:
    lock = RunLock(RunDir(Path(path)))
    lock.acquire()
    ready.set()
    release.wait(60)
    lock.release()


@pytest.mark.unit
def test_a_trainer_that_outlived_its_worker_is_waited_for_and_its_trial_is_never_failed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A worker died while its trainer was still starting (too early for the SIGTERM that stops the others): the
    next worker may not fail the trial when its own trainer finds the run locked; it waits, then takes it."""
    sweep = read_sweep(str(write(tmp_path, {"space": SPACE, "trials": 1})), [f"train.output_dir={tmp_path / 'runs'}"])
    study = open_study(sweep)
    asked = study.ask()
    space.suggest(sweep.search, asked)  # type: ignore[arg-type]
    Claims(sweep.dir).path(trial_name(asked.number)).touch()  # claimed by a worker that has died since
    context = multiprocessing.get_context("fork")  # a copy of this process at once (spawn re-imports torch: 1.5 s)
    ready, release = context.Event(), context.Event()
    trainer = context.Process(target=_hold_run_lock, args=(str(run_dir(sweep, asked.number).root), ready, release))
    trainer.start()
    assert ready.wait(60)
    feed = StudyFeed(sweep, study)
    assert feed.take() is None and feed.waiting()
    assert "trial 0 trial-0000: its worker has gone but its trainer still runs; waiting for it to end" in \
        capsys.readouterr().out
    feed.ended(Trial(0, trial_name(0), ()), "failed")  # a trainer of ours refused by that run lock
    assert study.get_trials()[0].state == optuna.trial.TrialState.RUNNING  # not failed
    release.set()
    trainer.join()
    feed.quiet_until = 0.0
    taken = feed.take()
    assert taken is not None and taken.index == 0 and not feed.waiting()
    feed.claims.release(taken.name)


@pytest.mark.unit
def test_a_trial_whose_worker_died_before_its_settings_were_sampled_is_failed_and_replaced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A worker killed between asking the study for a trial and recording its settings (the kill tests avoid that
    moment): the next worker fails the trial, which has nothing to resume as, and samples another in its place."""
    sweep = read_sweep(str(write(tmp_path, {"space": SPACE, "trials": 2})), [f"train.output_dir={tmp_path / 'runs'}"])
    study = open_study(sweep)
    asked = study.ask()  # no settings: its worker died here
    Claims(sweep.dir).path(trial_name(asked.number)).touch()  # its claim, free since its worker died
    feed = StudyFeed(sweep, study)
    taken = feed.take()
    assert taken is not None and taken.index == 1 and len(taken.settings) == len(SPACE)
    assert ("trial 0 trial-0000: it lost its worker before its settings were sampled; 0/2 trials done (0 pruned, "
            "1 failed)") in capsys.readouterr().out
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING]
    feed.claims.release(taken.name)


@pytest.mark.unit
def test_a_trial_below_the_median_is_pruned_at_its_evaluation_and_its_record_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep, study, trial, order = doomed_trial(tmp_path)
    monkeypatch.setenv(pruning.VARIABLE, json.dumps(order))
    config = load_config(SMOKE, [*TRIAL, "data.loader=tensor", f"train.output_dir={sweep.folder}",
                                 f"train.run_name={trial_name(trial.number)}", "train.resume=auto",
                                 "logging.level=warning"])
    run = RunDir(loop.train(config))
    assert run.finished()
    pruned = [r for r in records(run.root) if "prune/epoch" in r]
    assert [r["prune/epoch"] for r in pruned] == [1] and pruned[0]["prune/step"] == 8
    assert len([r for r in records(run.root) if "test/acc" in r]) == 1  # stopped after its first evaluation
    frozen = study.get_trials()[trial.number]
    assert list(frozen.intermediate_values) == [1]
    assert loop.train(config) == run.root  # finished: a start again does nothing


# --- the confirmation, on run directories made here ------------------------------------------------------------


def finished_run(run: RunDir, config: Any, accuracy: float, loss: Optional[float] = None) -> None:
    """A finished run directory as the trainer leaves it, with one evaluation (no training here)."""
    run.root.mkdir(parents=True)
    run.config.write_text(to_yaml(config))
    record = {"step": 8, "time": 1e9, "elapsed_s": 1.0, "train/epoch": 1.0, "test/acc": accuracy,
              "test/loss": 1 - accuracy if loss is None else loss, "test/images": 64}
    run.metrics.write_text(json.dumps(record) + "\n")
    run.weights.write_bytes(b"")


def searched(tmp_path: Path, top: int, trials: list[tuple[float, float]]) -> tuple[Path, Any, Any]:
    """A search of optim.lr over choices (the base's 0.02 among them) whose study holds ``trials`` (lr, value),
    completed: its file, sweep and study."""
    file = write(tmp_path, {"space": {"optim.lr": {"choice": [0.02, 0.05, 0.1]}}, "trials": len(trials),
                            "confirm": {"top": top, "seeds": 2}})
    sweep = read_sweep(str(file), [f"train.output_dir={tmp_path / 'runs'}"])
    study = open_study(sweep)
    lr = optuna.distributions.CategoricalDistribution([0.02, 0.05, 0.1])
    for value, score in trials:
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": value}, distributions={"optim.lr": lr},
                                                  value=score))
    return file, sweep, study


def confirmed_runs(sweep: Any, accuracies: dict[str, list[float]]) -> None:
    """Each confirmation run finished, with its setting's accuracies by seed ("base" for the control)."""
    check = read_sweep(str(sweep.dir.confirmation_file))
    for trial in check.trials:
        setting = next((s for s in trial.settings if s.startswith("optim.lr=")), "base")
        seed = int(next(s for s in trial.settings if s.startswith("train.seed=")).split("=")[1])
        finished_run(check.run_dir(trial), check.configs[trial.index], accuracies[setting][seed - 1])


@pytest.mark.unit
def test_two_winners_of_one_setting_and_a_winner_equal_to_the_base_are_each_confirmed_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The 3 best distinct settings: lr 0.05 (trials 0 and 1: once), the base's 0.02 (trial 2: the control), 0.1."""
    file, sweep, study = searched(tmp_path, 3, [(0.05, 0.30), (0.05, 0.29), (0.02, 0.25), (0.1, 0.20), (0.1, 0.1)])
    check = read_sweep(str(searching.confirm_file(sweep, study)))  # loads: no two trials of one configuration
    assert [t.settings[0] for t in check.trials] == \
        ["train.seed=1", "train.seed=2", "optim.lr=0.05", "optim.lr=0.05", "optim.lr=0.1", "optim.lr=0.1"]
    # The confirmation's runs, finished by other workers: the confirmation reads them.
    confirmed_runs(sweep, {"base": [0.40, 0.42], "optim.lr=0.05": [0.30, 0.32], "optim.lr=0.1": [0.20, 0.22]})
    monkeypatch.chdir(tmp_path)  # its folder is named relative to where the command ran (the spec holds it whole)
    assert searching.confirm(sweep, study, 1) == 0
    out = capsys.readouterr().out
    assert "trial 2 trial-0002 has the base configuration's settings: it is confirmed as the control" in out
    confirmation = sweep.dir.confirmation.root.relative_to(tmp_path)
    assert f"confirming the 2 best setting(s) and the base configuration on 2 fresh seeds each: 6 runs in " \
           f"{confirmation}\n" in out
    assert ("optim.lr=0.02: the base configuration (control); trial 2 scored 25.00 % with these settings in the "
            "search; confirmed 41.00 % (mean of 2 fresh seeds)") in out
    assert "optim.lr=0.05: trial 0 scored 30.00 % in the search; confirmed 31.00 %" in out
    assert "optim.lr=0.1: trial 3 scored 20.00 % in the search; confirmed 21.00 %" in out
    assert sweeps.main([str(file), "--best", f"train.output_dir={tmp_path / 'runs'}"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split()[-1] == "optim.lr=0.02"
    assert "the base configuration did best in the confirmation (trial 2 of the search had its settings)" in \
        captured.err


@pytest.mark.unit
def test_a_best_trial_with_the_base_settings_is_confirmed_as_the_control_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file, sweep, study = searched(tmp_path, 1, [(0.02, 0.30), (0.05, 0.29)])
    check = read_sweep(str(searching.confirm_file(sweep, study)))  # loads: the best trial is not the base's twin
    assert [t.settings for t in check.trials] == [("train.seed=1",), ("train.seed=2",)]
    confirmed_runs(sweep, {"base": [0.40, 0.42]})
    assert searching.confirm(sweep, study, 1) == 0
    out = capsys.readouterr().out
    assert "trial 0 trial-0000 has the base configuration's settings" in out
    assert "confirming the base configuration on 2 fresh seeds each: 2 runs" in out
    assert sweeps.main([str(file), "--best", f"train.output_dir={tmp_path / 'runs'}"]) == 0
    assert capsys.readouterr().out.split()[-1] == "optim.lr=0.02"


def running_trial(sweep: Any, study: Any, lr: float) -> Trial:
    """A trial the study has handed out with ``optim.lr`` = ``lr`` (running: its worker works on it)."""
    study.enqueue_trial({"optim.lr": lr})
    asked = study.ask()
    return study_module.sampled_trial(sweep, asked.number, space.suggest(sweep.search, asked))


@pytest.mark.unit
def test_list_judges_a_running_trials_folder_by_its_own_settings(tmp_path: Path) -> None:
    """An interrupted trial's run is its own, not 'other config' (its settings were left out of the check)."""
    file, sweep, study = searched(tmp_path, 1, [(0.05, 0.30)])
    trial = running_trial(sweep, study, 0.1)
    sweep.run_dir(trial).root.mkdir(parents=True)
    sweep.run_dir(trial).config.write_text(to_yaml(sweep.configs[trial.index]))
    fresh = read_sweep(str(file), [f"train.output_dir={tmp_path / 'runs'}"])  # as --list reads it
    row = next(line for line in searching.listing(fresh) if line.startswith(f"{trial.index}\t"))
    assert row.split("\t")[1] == "running (interrupted, no checkpoint)"


@pytest.mark.unit
def test_a_trial_refused_beside_a_finished_run_of_other_values_is_failed_not_scored(tmp_path: Path) -> None:
    """The runner refuses a trial whose folder holds a finished run of other sampled values: the study is told the
    trial failed, never that run's score."""
    _, sweep, study = searched(tmp_path, 1, [(0.05, 0.30)])
    trial = running_trial(sweep, study, 0.1)
    finished_run(sweep.run_dir(trial), load_config(sweep.base, [*sweep.overrides(trial), "optim.lr=0.05"]), 0.99)
    feed = StudyFeed(sweep, study)
    feed.claims.claim(trial.name)
    feed.ended(trial, "refused")
    told = study.get_trials(deepcopy=False)[trial.index]
    assert (told.state, told.value) == (optuna.trial.TrialState.FAIL, None)


@pytest.mark.unit
def test_best_never_reads_a_confirmation_folder_holding_another_configurations_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file, sweep, study = searched(tmp_path, 1, [(0.05, 0.30)])
    check = read_sweep(str(searching.confirm_file(sweep, study)))
    confirmed_runs(sweep, {"base": [0.40, 0.42], "optim.lr=0.05": [0.30, 0.32]})
    last = check.trials[-1]  # lr 0.05, seed 2: its folder now holds a run of lr 0.1
    shutil.rmtree(check.run_dir(last).root)
    finished_run(check.run_dir(last), load_config(check.base, [*check.overrides(last), "optim.lr=0.1"]), 0.99)
    assert sweeps.main([str(file), "--best", f"train.output_dir={tmp_path / 'runs'}"]) == 2
    assert "has no finished confirmation yet" in capsys.readouterr().err


# --- choosing on a validation split (issue 30) ----------------------------------------------------------------

@pytest.mark.unit
def test_the_default_metric_follows_the_validation_split_and_pruning_its_figure() -> None:
    """A base that holds a validation split out chooses on it by default (val_acc) and prunes on val/acc; a
    validation metric without one is refused, and so is pruning on a test figure the split leaves to the last epoch
    (unless the test set is scored every epoch)."""
    section = {"space": SPACE}
    assert space.read_search(section, "f").metric == "final_acc"
    assert space.read_search(section, "f", held_out=True).metric == "val_acc"
    chosen = space.read_search({**section, "metric": "val_loss"}, "f", held_out=True)
    assert chosen.metric == "val_loss" and chosen.direction == "minimize"
    assert space.read_search({**section, "metric": "final_acc"}, "f", held_out=True).metric == "final_acc"
    with pytest.raises(UsageError, match="f: search: metric: best_val_acc reads the validation split, and the base "
                                         "configuration holds none out; set data.val_size"):
        space.read_search({**section, "metric": "best_val_acc"}, "f")
    assert [space.EVALUATED[name] for name in ("val_acc", "best_val_acc", "val_loss")] == \
        ["val/acc", "val/acc", "val/loss"]
    assert space.read_search({**section, "pruning": "median"}, "f", held_out=True).pruning == "median"
    test_pruned = {**section, "metric": "final_acc", "pruning": "median"}
    with pytest.raises(UsageError, match="with data.val_size the test set is scored only after the last epoch"):
        space.read_search(test_pruned, "f", held_out=True)
    assert space.read_search(test_pruned, "f", held_out=True, test_every_epoch=True).pruning == "median"
    assert space.evaluated(load_config(SMOKE, TRIAL)) == (False, False)


@pytest.mark.unit
def test_a_search_file_takes_its_split_from_the_base_and_the_overrides(tmp_path: Path) -> None:
    file = write(tmp_path, {"space": SPACE})
    where = [f"train.output_dir={tmp_path / 'runs'}"]
    assert read_sweep(str(file), where).search.metric == "final_acc"  # type: ignore[union-attr]
    assert read_sweep(str(file), [*where, "data.val_size=64"]).search.metric == "val_acc"  # type: ignore[union-attr]
    held = write(tmp_path, {"space": SPACE}, overrides=[*TRIAL, "data.val_size=64"])
    assert read_sweep(str(held), where).search.metric == "val_acc"  # type: ignore[union-attr]


@pytest.mark.unit
def test_a_validation_search_prunes_on_the_validation_figure(tmp_path: Path) -> None:
    """The study tells the trainer to report val/acc (space.EVALUATED), and the trainer's pruning reports that figure
    alone: an evaluation without it (the test set's) asks nothing."""
    sweep, study, trial, order = doomed_trial(tmp_path)
    assert sweep.search is not None
    val = dataclasses.replace(sweep, search=dataclasses.replace(sweep.search, metric="val_acc"))
    told = json.loads(StudyFeed(val, study).environment(Trial(trial.number, trial_name(trial.number), ()))
                      [pruning.VARIABLE])
    assert told["report"] == "val/acc" and told["pruning"] == "median"
    pruner = pruning.Pruning(SimpleNamespace(is_main_process=True, num_processes=1), {**order, **told})  # type: ignore
    state = SimpleNamespace(epoch=1, global_step=8, wall=SimpleNamespace(read=lambda: 1.0), pruned=None)
    assert not pruner.stops(state, {"test/acc": 0.1}, 3)  # type: ignore[arg-type]
    assert pruner.stops(state, {"val/acc": 0.1, "val/loss": 2.0}, 3)  # type: ignore[arg-type]
    assert state.pruned == {"prune/epoch": 1, "prune/step": 8, "prune/elapsed_s": 1.0}
    assert list(study.get_trials()[trial.number].intermediate_values.items()) == [(1, 0.1)]


def split_run(run: RunDir, config: Any, val: float, test: float, images: int = 64) -> None:
    """A finished run with a validation split as the trainer leaves it: an evaluation of the split alone, then the
    last, of the split and the test set (``images`` test images, 32 validation ones)."""
    run.root.mkdir(parents=True)
    run.config.write_text(to_yaml(config))
    first = {"step": 4, "time": 1e9, "elapsed_s": 0.5, "train/epoch": 1.0, "val/acc": val / 2, "val/loss": 2.0,
             "val/images": 32}
    last = {"step": 8, "time": 1e9, "elapsed_s": 1.0, "train/epoch": 2.0, "val/acc": val, "val/loss": 1 - val,
            "val/images": 32, "test/acc": test, "test/loss": 1 - test, "test/images": images}
    run.metrics.write_text(json.dumps(first) + "\n" + json.dumps(last) + "\n")
    run.weights.write_bytes(b"")


def validation_search(tmp_path: Path, top: int, trials: list[tuple[float, float]],
                      confirmed: dict[str, list[tuple[float, float]]]) -> tuple[Any, Any]:
    """:func:`searched`, as if its base held a validation split out (metric val_acc; ``trials``: (lr, validation
    accuracy)), its confirmation written and finished with ``confirmed``'s (validation, test) accuracies by seed."""
    file = write(tmp_path, {"space": {"optim.lr": {"choice": [0.02, 0.05, 0.1]}}, "trials": len(trials),
                            "confirm": {"top": top, "seeds": 2}})
    sweep = read_sweep(str(file), [f"train.output_dir={tmp_path / 'runs'}"])
    assert sweep.search is not None
    sweep = dataclasses.replace(sweep, search=dataclasses.replace(sweep.search, metric="val_acc"))
    study = open_study(sweep)
    lr = optuna.distributions.CategoricalDistribution([0.02, 0.05, 0.1])
    for value, score in trials:
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": value}, distributions={"optim.lr": lr},
                                                  value=score))
    check = read_sweep(str(searching.confirm_file(sweep, study)))
    for trial in check.trials:
        setting = next((s for s in trial.settings if s.startswith("optim.lr=")), "base")
        seed = int(next(s for s in trial.settings if s.startswith("train.seed=")).split("=")[1])
        split_run(check.run_dir(trial), check.configs[trial.index], *confirmed[setting][seed - 1])
    return sweep, study


@pytest.mark.unit
def test_a_validation_search_is_confirmed_on_the_test_set_and_best_chooses_on_validation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """lr 0.05 did best on the validation split, lr 0.1 on the test set: the confirmation judges the test set, shows
    the validation figures beside it, and --best takes lr 0.05, the validation split's choice, then says that on
    the test set it did not beat the base."""
    sweep, study = validation_search(tmp_path, 2, [(0.05, 0.50), (0.1, 0.30), (0.02, 0.20)], {
        "base": [(0.40, 0.39), (0.42, 0.41)], "optim.lr=0.05": [(0.50, 0.36), (0.52, 0.38)],
        "optim.lr=0.1": [(0.20, 0.60), (0.22, 0.62)]})
    assert searching.confirm(sweep, study, 1) == 0
    out = capsys.readouterr().out
    assert "final test accuracy (%) by group" in out and "chosen by the search" not in out
    assert ("sweep search: optim.lr=0.02: the base configuration (control); confirmed 40.00 % test, 41.00 % val (mean "
            "of 2 fresh seeds)") in out
    assert ("sweep search: optim.lr=0.05: trial 0 scored 50.00 % (val) in the search; confirmed 37.00 % test, "
            "51.00 % val (mean of 2 fresh seeds)") in out
    assert "optim.lr=0.1: trial 1 scored 30.00 % (val) in the search; confirmed 61.00 % test, 21.00 % val" in out
    last = out.splitlines()[-1]
    assert last.startswith("sweep search: no significant difference on the test set between the winner "
                           "(optim.lr=0.05) and the base (-3.00 points, p = ")
    assert last.endswith(f", holm-adjusted): the base is as good; --plan says how many seeds would tell them apart: "
                         f"python -m cifarlab.compare {sweep.dir.confirmation.root} --plan 3")
    assert searching.best(sweep).split()[-1] == "optim.lr=0.05"
    notes = capsys.readouterr().err.splitlines()
    assert notes[-1] == "cifarlab: note: " + last[len("sweep search: "):]
    assert compare.main(last.split(" apart: ")[1].split()[3:]) == 0  # the command runs as printed
    assert "plan: to find a difference of 3.00 points" in capsys.readouterr().out


@pytest.mark.unit
def test_the_confirmation_and_best_say_when_the_winner_beat_the_base_on_the_test_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A test-set search: its confirmation also says it chose on the images it is judged on."""
    file, sweep, study = searched(tmp_path, 1, [(0.05, 0.60), (0.02, 0.50)])
    check = read_sweep(str(searching.confirm_file(sweep, study)))
    scores = {"base": [0.500, 0.507], "optim.lr=0.05": [0.600, 0.607]}
    for trial in check.trials:  # 10,000 test images each: a 10-point difference is clear on 2 seeds
        setting = next((s for s in trial.settings if s.startswith("optim.lr=")), "base")
        seed = int(next(s for s in trial.settings if s.startswith("train.seed=")).split("=")[1])
        split_run(check.run_dir(trial), check.configs[trial.index], 0.5, scores[setting][seed - 1], images=10_000)
    assert searching.confirm(sweep, study, 1) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == (f"sweep search: these runs were chosen by the search {sweep.folder} on the test set "
                       f"(final_acc), and final_acc judges them on it too: the winner's figure is optimistic (chosen "
                       f"on the same images); hold out a validation split (data.val_size) for the search to choose "
                       f"on, and judge on the test set")
    assert re.fullmatch(r"sweep search: the winner \(optim\.lr=0\.05\) beat the base on fresh seeds on the test "
                        r"set: \+10\.00 points, p = 0\.0\d+", out[-1]), out[-1]
    assert sweeps.main([str(file), "--best", f"train.output_dir={tmp_path / 'runs'}"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split()[-1] == "optim.lr=0.05"
    assert captured.err.splitlines()[-1] == "cifarlab: note: " + out[-1][len("sweep search: "):]


def read_only_search(root: Path) -> tuple[Path, Path]:
    """A confirmed search with a trial still running, every folder and file in it then made read-only: its file
    and its output folder."""
    file, sweep, study = searched(root, 2, [(0.05, 0.30), (0.1, 0.20)])
    searching.confirm_file(sweep, study)
    confirmed_runs(sweep, {"base": [0.40, 0.42], "optim.lr=0.05": [0.30, 0.32], "optim.lr=0.1": [0.20, 0.22]})
    asked = study.ask()
    asked.suggest_categorical("optim.lr", [0.02, 0.05, 0.1])
    for path in [root / "runs", *(root / "runs").rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return file, root / "runs"


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` (itself too) with its size, modification time and mode: what writing changes."""
    return {str(path): (path.lstat().st_size, path.lstat().st_mtime_ns, path.lstat().st_mode)
            for path in [root, *root.rglob("*")]}


@pytest.mark.unit
def test_list_and_best_read_a_read_only_search_folder_without_writing(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Tests run as root here, which permission bits do not stop: that nothing is written is checked on the folder
    itself (no path added or removed, none changed in size, time or mode: the journal appended to, a lock file made
    and removed in it)."""
    file, runs = read_only_search(tmp_path)
    before = snapshot(runs)
    assert sweeps.main([str(file), "--list", f"train.output_dir={runs}"]) == 0
    assert [line.split("\t")[:2] for line in capsys.readouterr().out.splitlines()] == \
        [["index", "state"], ["0", "complete"], ["1", "complete"], ["2", "running (not started)"]]
    assert sweeps.main([str(file), "--best", f"train.output_dir={runs}"]) == 0
    assert capsys.readouterr().out.split()[-1] == "optim.lr=0.02"
    assert snapshot(runs) == before


def drawn_search(root: Path) -> tuple[Path, Path]:
    """A search over SPACE whose study holds 12 completed trials, scored by their learning rate alone (best at 0.05),
    and 2 pruned ones: its file and its output folder."""
    file = write(root, {"space": SPACE, "trials": 14})
    sweep = read_sweep(str(file), [f"train.output_dir={root / 'runs'}"])
    study = open_study(sweep)
    lr = optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)
    decay = optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
    for number in range(14):
        params = {"optim.lr": 10 ** (-3 + 3 * ((number * 7) % 12) / 11), "optim.weight_decay": 10 ** (-5 + number / 5)}
        score = 0.6 - 0.03 * math.log10(params["optim.lr"] / 0.05) ** 2
        state = optuna.trial.TrialState.PRUNED if number in (5, 9) else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={"optim.lr": lr, "optim.weight_decay": decay}, state=state,
            value=score if state == optuna.trial.TrialState.COMPLETE else None, intermediate_values={1: score}))
    return file, root / "runs"


@pytest.mark.unit
def test_list_draws_optunas_pictures_of_the_study_and_writes_nothing_else(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    file, runs = drawn_search(tmp_path)
    before = snapshot(runs)
    assert sweeps.main([str(file), "--list", "--png", str(tmp_path / "study.svg"), f"train.output_dir={runs}"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 + 14 and captured.out.count("\tpruned\t") == 2
    written = [tmp_path / f"study-{name}.svg" for name in ("history", "slice", "importances")]
    assert captured.err.splitlines()[:3] == [f"cifarlab: note: picture written to {path}" for path in written]
    assert captured.err.splitlines()[3].startswith("importance of each searched key for final_acc")
    assert all(path.read_bytes().startswith((b"<?xml", b"<svg")) for path in written)
    assert not (tmp_path / "study.svg").exists() and snapshot(runs) == before
    # The importances repeat exactly (PED-ANOVA: no randomness), and the learning rate, which alone moves the score,
    # matters most.
    for name in ("a.png", "b.png"):
        assert sweeps.main([str(file), "--list", "--png", str(tmp_path / name), f"train.output_dir={runs}"]) == 0
    assert (tmp_path / "a-importances.png").read_bytes() == (tmp_path / "b-importances.png").read_bytes()
    lr, decay = (line.split() for line in capsys.readouterr().err.splitlines()[4:6])
    assert lr[0] == "optim.lr" and decay[0] == "optim.weight_decay" and float(lr[1]) > float(decay[1])


@pytest.mark.unit
@pytest.mark.parametrize(("options", "search", "expected"), [
    (["--png", "x.png"], True, "--png goes with --list"),
    (["--list", "--png", "x.gif"], True, "x.gif: the name's ending picks the picture's format; give a file name "
                                         "ending in .png, .svg or .pdf"),
    (["--list", "--png", "x.png"], False, "has no search: section; compare draws a sweep's runs"),
    (["--list", "--png", "x.png"], None, "--png: search search has not started"),
])
def test_list_pictures_are_refused_in_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                options: list[str], search: Optional[bool],
                                                                expected: str) -> None:
    """search True: a study with trials; False: a sweep without search:; None: a search that has not started."""
    if search:
        file, _ = drawn_search(tmp_path)
    elif search is None:
        file = write(tmp_path, {"space": SPACE})
    else:
        file = tmp_path / "grid.yaml"
        file.write_text(yaml.safe_dump({"name": "grid", "base": SMOKE, "grid": {"optim.lr": [0.01, 0.05]}}))
    before = snapshot(tmp_path)
    options = [str(tmp_path / word) if word.startswith("x.") else word for word in options]
    assert sweeps.main([str(file), *options, f"train.output_dir={tmp_path / 'runs'}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith("cifarlab: error: ") and expected in captured.err
    assert snapshot(tmp_path) == before


@pytest.mark.integration
def test_list_and_best_work_for_a_user_who_cannot_write_the_folder(tmp_path: Path) -> None:
    """As an unprivileged user (root runs the test as nobody, with setpriv), whom the folder's modes keep out."""
    root = os.geteuid() == 0
    if root and shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run as an unprivileged user")
    shared = Path(tempfile.mkdtemp(prefix="cifarlab-shared-"))  # tmp_path's parents are root's alone (0700)
    try:
        shared.chmod(0o755)
        file, runs = read_only_search(shared)
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if root else []
        for option in ("--list", "--best"):
            done = subprocess.run([*user, *SWEEP, str(file), option, f"train.output_dir={runs}"], cwd=shared,
                                  env=cli_env(HOME=str(shared)), capture_output=True, text=True, timeout=120)
            check(done)
        assert done.stdout.split()[-1] == "optim.lr=0.02"
    finally:
        for path in [shared, *shared.rglob("*")]:
            path.chmod(0o755)
        shutil.rmtree(shared)


@pytest.mark.unit
def test_compare_ranks_a_search_folder_by_the_search_metric_and_direction(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A search on test_loss: the lowest loss is its best, though its accuracy is not the highest; --metric is an
    explicit override; a folder from before search.yaml falls back to final_acc and says so. No Optuna needed."""
    file = write(tmp_path, {"space": {"optim.lr": {"uniform": [0.01, 0.1]}}, "metric": "test_loss", "trials": 3})
    sweep = read_sweep(str(file), [f"train.output_dir={tmp_path / 'runs'}"])
    open_study(sweep)
    assert yaml.safe_load((sweep.folder / "search.yaml").read_text()) == {
        "space": {"optim.lr": {"uniform": [0.01, 0.1]}}, "metric": "test_loss", "direction": "minimize"}
    for number, (lr, accuracy, loss) in enumerate([(0.01, 0.30, 2.0), (0.0517, 0.20, 1.5), (0.1, 0.25, 1.8)]):
        trial = Trial(number, trial_name(number), (f"optim.lr={lr}",))
        finished_run(sweep.run_dir(trial), load_config(SMOKE, sweep.overrides(trial)), accuracy, loss)
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError

    def ranks(*options: str) -> tuple[list[int], dict[str, Any]]:
        assert compare.main([str(sweep.folder), *options]) == 0
        table = capsys.readouterr().out
        assert compare.main([str(sweep.folder), "--json", *options]) == 0
        listed = json.loads(capsys.readouterr().out)
        by_rank = sorted((t["rank"], t["number"]) for t in listed["trials"])
        assert [int(n) for n in re.findall(r"trial-000(\d)", table)] == [number for _, number in by_rank]
        return [number for _, number in by_rank], listed

    order, listed = ranks()
    assert order == [1, 2, 0] and (listed["metric"], listed["direction"]) == ("test_loss", "minimize")
    assert listed["keys"] == ["optim.lr"] and listed["trials"][1]["settings"] == {"optim.lr": 0.0517}
    assert ranks("--metric", "final_acc")[0] == [0, 2, 1]
    (sweep.folder / "search.yaml").unlink()
    assert compare.main([str(sweep.folder), "--json"]) == 0
    captured = capsys.readouterr()
    assert [t["rank"] for t in json.loads(captured.out)["trials"]] == [1, 3, 2]
    assert "does not say what its search optimizes" in captured.err and "ranked by final_acc" in captured.err
    (sweep.folder / "search.yaml").write_text("metric: accuracy\n")
    assert compare.main([str(sweep.folder)]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


# --- the whole search, killed and continued -----------------------------------------------------------------


def study_of(folder: Path) -> Any:
    return optuna.load_study(study_name="search", storage=pruning.journal(str(SweepDir(folder).journal)))


def finished_trials(folder: Path) -> int:
    """Trials whose runs have finished (read from their folders: cheaper than the study, for polling)."""
    return sum(RunDir(run).finished() for run in folder.glob("trial-*"))


TRAINING = r": (started|resumed from its checkpoint at step \d+); log "
"""A worker's line for a trainer it has started."""


def training_with_checkpoint(folder: Path) -> bool:
    """Some trial's trainer is training (it holds the run lock) and has saved a checkpoint."""
    return any(not RunDir(run).finished() and list(RunDir(run).step_checkpoints()) and
               study_module._locked(RunDir(run).lock) for run in folder.glob("trial-*"))


def kill_between_journal_writes(worker: Background, folder: Path, tree: bool) -> None:
    """SIGKILL a worker (``tree``: and every process below it) at a moment the study's journal is quiet
    (:func:`quiet_journal`)."""
    victims = [worker.process.pid, *(worker.descendants() if tree else [])]
    quiet_journal(folder)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def quiet_journal(folder: Path) -> None:
    """Wait for a moment no process is writing the study's journal and no worker is sampling a trial. One killed
    while appending leaves the journal's lock file behind, which Optuna makes every other process wait out (its grace
    period, 30 s); one killed between asking the study for a trial and recording its settings leaves a trial that is
    failed by design ("it lost its worker before its settings were sampled") and replaced. With trials of a fraction
    of a second both moments come often; the kills in these tests are about claims, adoption and resuming."""
    journal = SweepDir(folder).journal
    lock = journal.with_name(journal.name + ".lock")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        size = journal.stat().st_size
        if not sampling(journal) and not lock.exists() and journal.stat().st_size == size:
            return
        time.sleep(0.001)


def sampling(journal: Path) -> bool:
    """Whether some trial of the journal was asked for and is running without all its settings (Optuna's operations:
    4 creates a trial, 5 sets one of its parameters, 6 its state)."""
    created, settings, ended = 0, dict[int, int](), set()
    for line in journal.read_text().splitlines():
        try:
            operation = json.loads(line)
        except ValueError:  # a line being appended
            continue
        if operation["op_code"] == 4:
            created += 1
        elif operation["op_code"] == 5:
            settings[operation["trial_id"]] = settings.get(operation["trial_id"], 0) + 1
        elif operation["op_code"] == 6 and operation.get("state") != optuna.trial.TrialState.RUNNING.value:
            ended.add(operation["trial_id"])
    return any(settings.get(trial, 0) < len(SPACE) and trial not in ended for trial in range(created))


def check_search(folder: Path, trials: int) -> list[Any]:
    """Exactly ``trials`` completed or pruned trials, none still running, none failed; each its own finished run
    directory, which no two trainers ever trained at once."""
    study = study_of(folder)
    counted = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(counted) == trials, [(t.number, t.state) for t in study.get_trials()]
    assert len(study.get_trials()) == trials  # nothing failed, nothing sampled twice
    runs = sorted(folder.glob("trial-*"))
    assert [run.name for run in runs] == [trial_name(n) for n in range(trials)]
    assert all(RunDir(run).finished() for run in runs)
    logs = "".join(path.read_text() for path in (folder / "logs").glob("trial-*.log"))
    assert "in use by another trainer" not in logs
    for trial in counted:
        pruned = [r for r in records(folder / trial_name(trial.number)) if "prune/epoch" in r]
        assert (trial.state == optuna.trial.TrialState.PRUNED) == bool(pruned)
    return counted


FAKE = ["--trainer", FAKE_TRAINER]
"""The trials run tests/fake_trainer.py (cifarlab.sweep's hidden option): the search's bookkeeping in seconds; it keeps
the real trainer's outside contract, pruning included (tests/test_trainer_contract.py holds both to one table)."""


@pytest.mark.integration
def test_a_20_trial_search_survives_eight_rounds_of_sigkills_of_workers_and_of_everything_and_is_confirmed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "runs" / "search"
    file = write(tmp_path, {"space": SPACE, "method": "tpe", "trials": 20, "pruning": "median", "seed": 0,
                            "confirm": {"top": 2, "seeds": 2}})
    arguments = [str(file), "--parallel", "2", f"train.output_dir={tmp_path / 'runs'}", *FAKE]
    chance = random.Random(22)
    # "worker": one worker's process, its trainers orphaned (the kernel stops them: SIGTERM, a checkpoint); "pair":
    # two workers at once (array tasks), one of them killed while the other goes on and takes its trials over, then
    # the other too; "everything": a worker and its trainers at once (node loss).
    rounds = ["worker", "everything", "pair", "worker", "everything", "pair", "worker", "everything"]
    for round_, what in enumerate(rounds):
        workers = [Background([*SWEEP, *arguments], tmp_path, tmp_path / f"round{round_}-{i}.log")
                   for i in range(2 if what == "pair" else 1)]
        # A random moment after some trial has saved a checkpoint (and some have finished), once each worker runs
        # trainers: a worker killed while it opens the study could leave Optuna's journal lock behind, which every
        # other worker then waits out (30 s).
        least = 2 * round_ + 2
        wait_until(lambda: finished_trials(folder) >= least and training_with_checkpoint(folder)  # noqa: B023
                   and all(re.search(TRAINING, worker.output()) for worker in workers),  # noqa: B023
                   f"round {round_}: trials to finish and one to checkpoint", timeout=120)
        time.sleep(chance.uniform(0, 0.3))
        kill_between_journal_writes(workers[0], folder, tree=what == "everything")
        workers[0].process.wait()
        if what == "pair":
            went_on = finished_trials(folder) + 1
            wait_until(lambda: finished_trials(folder) >= went_on, f"round {round_}: the other worker to go on")  # noqa: B023
            kill_between_journal_writes(workers[1], folder, tree=True)
            workers[1].process.wait()
    # The last worker, the confirmation, --best, compare: in this process (no signal needed), compare --json as the
    # command.
    assert sweeps.main(arguments) == 0
    last = capsys.readouterr().out
    counted = check_search(folder, 20)
    everything = last + "".join(path.read_text() for path in tmp_path.glob("round*.log"))
    assert "its worker has gone; taking it over" in everything
    logs = "".join(path.read_text() for path in (folder / "logs").glob("trial-*.log"))
    assert "resumed from" in logs  # a trial killed mid-run continued from its checkpoint
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in counted)
    # Confirmed: the 2 best and the base configuration, 2 fresh seeds each, compared with the base.
    assert "difference from optim.lr=0.02, optim.weight_decay=0.0005" in last
    assert last.count("in the search; confirmed") == 2 and "the base configuration (control)" in last
    assert len([run for run in (folder / "confirm").iterdir() if RunDir(run).finished()]) == 6
    confirmation = [log.read_text() for log in (folder / "confirm" / "logs").glob("*.log")]
    assert len(confirmation) == 6 and all(FAKE_TRAINER in log for log in confirmation)  # the search's trainer
    assert sweeps.main([*arguments, "--best"]) == 0
    words = capsys.readouterr().out.split()
    assert words[:2] == ["--config", SMOKE] and words[-2].startswith("optim.lr=")
    assert trainer_command.main([*words, "--print-config"]) == 0  # pasted as is, it loads
    capsys.readouterr()
    assert sweeps.main(arguments) == 0
    assert capsys.readouterr().out.count(": started;") == 0  # everything done: nothing runs again
    # compare on the search folder: the completed trials best first, the pruned ones counted, the picture.
    assert compare.main([str(folder), "--png", str(tmp_path / "search.png")]) == 0
    shown = capsys.readouterr().out
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in counted)
    assert f"search {folder}: 20 trials: {20 - pruned} complete, {pruned} pruned, 0 unfinished" in shown
    assert shown.count("trial-00") == min(15, 20 - pruned) and f"cifarlab.compare {folder / 'confirm'}" in shown
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    listed = json.loads(check(subprocess.run([sys.executable, "-m", "cifarlab.compare", str(folder), "--json"],
                                             cwd=tmp_path, env=cli_env(), capture_output=True, text=True)).stdout)
    assert [t["number"] for t in listed["trials"]] == list(range(20))
    assert listed["keys"] == ["optim.lr", "optim.weight_decay"]
    states = {t.number: t.state for t in counted}
    assert all((t["state"] == "complete") == (states[t["number"]] == optuna.trial.TrialState.COMPLETE)
               for t in listed["trials"])


@pytest.mark.integration
def test_a_real_search_prunes_at_its_evaluations_and_confirms_the_control(tmp_path: Path) -> None:
    """The search with cifarlab.train itself (the 20-trial search above runs the fake trainer): its trials report to
    the study, are pruned by its pruner at their first evaluation, and the confirmation runs finish and are compared.
    Five earlier trials at the base configuration's settings did far better than fake data allows: each new trial is
    pruned at epoch 1, and the best setting to confirm is the base's, confirmed once, as the control."""
    lrs = [0.02, 0.05]  # smoke.yaml's learning rate and another
    file = write(tmp_path, {"space": {"optim.lr": {"choice": lrs}}, "trials": 6, "pruning": "median",
                            "confirm": {"top": 1, "seeds": 2}},
                 overrides=[*TRIAL, "data.loader=tensor", "data.train_size=128", "train.epochs=2"])
    sweep = read_sweep(str(file), [f"train.output_dir={tmp_path / 'runs'}"])
    study = open_study(sweep)
    for _ in range(5):
        study.add_trial(optuna.trial.create_trial(
            params={"optim.lr": 0.02}, distributions={"optim.lr": optuna.distributions.CategoricalDistribution(lrs)},
            value=0.95, intermediate_values={1: 0.95, 2: 0.95}))
    done = subprocess.run([*SWEEP, str(file), "--parallel", "2", f"train.output_dir={tmp_path / 'runs'}"],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    check(done)
    trials = study_of(sweep.folder).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5 + ["PRUNED"]
    for frozen in trials[5:]:
        run = RunDir(sweep.folder / trial_name(frozen.number))
        assert run.finished() and list(frozen.intermediate_values) == [1]
        assert [r["prune/epoch"] for r in records(run.root) if "prune/epoch" in r] == [1]
        assert "pruned by the search at epoch 1" in (sweep.folder / "logs" / f"{run.root.name}.log").read_text()
    assert "trial 0 trial-0000 has the base configuration's settings: it is confirmed as the control" in done.stdout
    assert "confirming the base configuration on 2 fresh seeds each: 2 runs" in done.stdout
    assert re.search(r"optim.lr=0.02: the base configuration \(control\); trial 0 scored 95.00 % with these settings "
                     r"in the search; confirmed \d+\.\d\d % \(mean of 2 fresh seeds\)", done.stdout)
    assert [run.name for run in sorted((sweep.folder / "confirm").iterdir()) if RunDir(run).finished()] == [
        "seed=1", "seed=2"]


@pytest.mark.integration
def test_a_trial_on_two_processes_is_pruned_on_both_at_the_same_evaluation(tmp_path: Path) -> None:
    sweep, study, trial, order = doomed_trial(tmp_path)
    arguments = ["--config", SMOKE, *TRIAL, f"train.output_dir={sweep.folder}", "train.run_name=two"]
    done = subprocess.run([*launch_command(2), *arguments], cwd=tmp_path, capture_output=True, text=True,
                          env=cli_env(**{pruning.VARIABLE: json.dumps(order)}), timeout=300)
    check(done)
    assert "pruned by the search at epoch 1 (step 8)" in done.stdout + done.stderr  # global batches of 32
    run = RunDir(sweep.folder / "two")
    assert run.finished() and [r["prune/epoch"] for r in records(run.root) if "prune/epoch" in r] == [1]
    assert list(study.get_trials()[trial.number].intermediate_values) == [1]


def kill_tasks(file: Path, folder: Path, worker: str = "") -> None:
    """Node loss: SIGKILL the batch shells running ``file`` (only array task ``worker``'s, if given) and every
    process below them, all at once (nothing gets to checkpoint or requeue), while the journal in ``folder`` is quiet
    (:func:`quiet_journal`)."""
    victims = []
    for process in psutil.process_iter(["cmdline"]):
        line = process.info["cmdline"] or []
        if str(file) in line and any(word.endswith("slurm_script") for word in line):
            children = process.children(recursive=True)
            if not worker or any(f"--trial {worker}" in " ".join(c.cmdline()) for c in children):
                victims += [process, *children]
    assert victims, f"no batch shell of {file} running"
    quiet_journal(folder)
    for process in victims:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.slurm
def test_a_20_trial_search_as_a_slurm_array_survives_killed_tasks(slurm_env: dict[str, str], tmp_path: Path) -> None:
    env = slurm_env
    _slurm, _wait = test_slurm._slurm, test_slurm._wait
    folder = tmp_path / "runs" / "search"
    file = write(tmp_path, {"space": SPACE, "trials": 20, "pruning": "median"})
    # The trials run the fake trainer (its option passes through the batch script's "$@" to cifarlab.sweep).
    arguments = [str(file), f"train.output_dir={tmp_path / 'runs'}", *FAKE]

    def submit() -> str:
        return _slurm(env, "sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", f"--chdir={tmp_path}",
                      f"--export=ALL,CIFARLAB_PYTHON={sys.executable},WANDB_SILENT=true",
                      str(REPO / "slurm" / "sweep.sbatch"), *arguments)

    def gone(array: str) -> bool:
        return not _slurm(env, "squeue", "--noheader", "--array", "--jobs", array)

    array = submit()
    _wait(lambda: finished_trials(folder) >= 4 and training_with_checkpoint(folder), "trials to end and one to "
          "checkpoint", timeout=300)
    kill_tasks(file, folder, worker="0")  # task 0's node is lost; task 1 goes on
    _wait(lambda: finished_trials(folder) >= 8 and training_with_checkpoint(folder), "task 1 to go on", timeout=300)
    kill_tasks(file, folder)  # then every node
    _wait(lambda: gone(array), "the array to end")
    array = submit()  # the study continues
    _wait(lambda: gone(array), "the second array to end", timeout=600)
    check_search(folder, 20)
    logs = "".join(path.read_text() for path in (folder / "logs").glob("trial-*.log"))
    assert "resumed from" in logs and FAKE_TRAINER in logs
    slurm_logs = "".join(path.read_text() for path in tmp_path.glob("slurm-cifarlab-sweep-*.out"))
    assert "search (worker 0)" in slurm_logs and "search (worker 1)" in slurm_logs
    assert "its worker has gone; taking it over" in slurm_logs


@pytest.mark.unit
def test_a_study_of_another_space_in_the_folder_is_refused(tmp_path: Path) -> None:
    first = read_sweep(str(write(tmp_path, {"space": SPACE})), [f"train.output_dir={tmp_path / 'runs'}"])
    open_study(first)
    other = {"optim.lr": {"log_uniform": [1.0e-4, 1.0]}}
    second = read_sweep(str(write(tmp_path, {"space": other})), [f"train.output_dir={tmp_path / 'runs'}"])
    with pytest.raises(UsageError, match="is the study of another search \\(its space differs"):
        open_study(second)
    longer = read_sweep(str(write(tmp_path, {"space": SPACE})), [f"train.output_dir={tmp_path / 'runs'}",
                                                                  "train.epochs=5"])
    with pytest.raises(UsageError, match=r"its train.epochs \(3 there, 5 here\) differs"):
        open_study(longer)
    more = read_sweep(str(write(tmp_path, {"space": SPACE, "trials": 40, "method": "random"})),
                      [f"train.output_dir={tmp_path / 'runs'}", "logging.wandb.mode=offline", "data.root=/elsewhere"])
    open_study(more)  # more trials, another sampler, W&B on, the data elsewhere: the same study goes on


@pytest.mark.unit
@pytest.mark.parametrize("file", ["search.yaml", "search-jpeg.yaml"])
def test_the_search_examples_hold_out_5000_images_and_choose_on_them(file: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/sweeps/search*.yaml (issue 30): chosen and pruned on 5,000 held-out images; the same file with
    data.val_size=0, as bench/search.py runs it beside, chooses on the test set as searches did before."""
    monkeypatch.chdir(REPO)
    sweep = read_sweep(f"configs/sweeps/{file}", [f"train.output_dir={tmp_path}"])
    assert sweep.search is not None and sweep.search.metric == "val_acc"
    assert "data.val_size=5000" in yaml.safe_load((REPO / "configs" / "sweeps" / file).read_text())["overrides"]
    if file == "search-jpeg.yaml":  # its metric is the default, which follows the split
        plain = read_sweep(f"configs/sweeps/{file}", [f"train.output_dir={tmp_path}", "data.val_size=0"])
        assert plain.search is not None and plain.search.metric == "final_acc"
