"""Sweeps: many training runs from one file, each a normal, resumable run directory.

    python -m cifarlab.sweep configs/sweeps/example.yaml --list      # the trials by index, and which finished
    python -m cifarlab.sweep configs/sweeps/example.yaml             # run them all, one after another
    python -m cifarlab.sweep configs/sweeps/example.yaml --parallel 2 train.output_dir=/scratch/runs
    python -m cifarlab.sweep configs/sweeps/example.yaml --trial 3   # one trial (a SLURM array task)
    python -m cifarlab.sweep configs/sweeps/example.yaml --dry-run --config_file launch/cpu_2proc.yaml
    sbatch --array=0-$(( $(python -m cifarlab.sweep SWEEP.yaml --count) - 1 )) slurm/sweep.sbatch SWEEP.yaml

A sweep file (docs/sweeps.md has the details):

    name: lr-vs-seed                  # its folder under train.output_dir (default: the file's name)
    base: configs/smoke.yaml          # --config of every trial: from the current directory, else the file's
    overrides: [train.epochs=2]       # every trial
    trials: [{model.name: lenet}, {model.name: convnet_bn, optim.weight_decay: 0}]   # explicit sets
    grid: {optim.lr: [0.01, 0.05]}    # cross product, crossed with the trials
    seeds: [0, 1, 2]                  # train.seed, crossed with all of the above
    launch: [--config_file launch/cpu_2proc.yaml]   # accelerate launch options; none: python -m cifarlab.train

Each trial is a run in <train.output_dir>/<name>/<trial name> started with train.resume=auto: running a
sweep again skips finished trials and resumes the others; a trial whose run directory holds another
configuration is refused. Extra key=value arguments apply to every trial; other options after SWEEP.yaml
(--num_processes 2, --mixed_precision=bf16, ...) go to `accelerate launch`. The trial list, with each
trial's command, is written to <name>/sweep.yaml and each trial's output appended to <name>/logs/.
Exit codes: 0 every trial finished, 1 some did not (failed or refused), 2 bad input (nothing written),
75 a trial was stopped by SIGUSR1/SIGTERM (run again to continue), 130 interrupted.
This module imports no torch: it checks every trial's config, then starts trainers.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import hashlib
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Optional

from omegaconf import OmegaConf

from cifarlab import files
from cifarlab.config import Config, changes_course, load_config, resume_changes, shown
from cifarlab.errors import Preempted, UsageError
from cifarlab.report import console
from cifarlab.run.rundir import RunDir

FILE_KEYS = ("name", "base", "overrides", "trials", "grid", "seeds", "launch")
SET_BY_SWEEP = ("train.run_name", "train.resume")
"""Keys the sweep sets for every trial: a sweep file or command line that sets them is refused."""
NOT_SWEPT = ("train.output_dir",)
"""Keys that may be set for all trials but not per trial (all trials live in one folder)."""
SEED = "train.seed"
STOPPED = (Preempted.exit_code, 130)
"""A trainer's exit codes after it saved a checkpoint on SIGUSR1/SIGTERM, and on Ctrl-C."""
WANDB_TAG_LENGTH = 64  # W&B refuses longer tags
NAME_LENGTH = 120  # folder names stay well under the usual 255-byte limit


# --- the sweep file -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    index: int
    name: str
    settings: tuple[str, ...]
    """Its own ``key=value`` overrides (trials, grid values, seed), in that order."""


@dataclass(frozen=True)
class Sweep:
    name: str
    source: Path
    base: Optional[str]
    """The --config of every trial, as found (see :func:`_find_base`)."""
    common: tuple[str, ...]
    """``key=value`` overrides of every trial: the file's, then the command line's."""
    launch: tuple[str, ...]
    """``accelerate launch`` options; none: the trainer runs without a launcher."""
    folder: Path
    """``<train.output_dir>/<name>``: the trials' run directories, sweep.yaml and logs/."""
    trials: tuple[Trial, ...]
    configs: tuple[Config, ...] = field(default=(), repr=False)
    """Each trial's resolved config, by index (every one loaded, hence checked, when the sweep is read)."""

    def run_dir(self, trial: Trial) -> RunDir:
        return RunDir(self.folder / trial.name)

    def log(self, trial: Trial) -> Path:
        return self.folder / "logs" / f"{trial.name}.log"

    @property
    def record(self) -> Path:
        return self.folder / "sweep.yaml"

    def overrides(self, trial: Trial) -> list[str]:
        """Everything after the trainer's --config: common, the trial's own, then where and how it runs."""
        tags = [setting[:WANDB_TAG_LENGTH] for setting in trial.settings]
        wandb = [f"logging.wandb.group={_text(self.name)}", f"logging.wandb.tags={_text(tags)}"]
        # An explicit group or tags in the sweep's overrides win over the sweep's own.
        wandb = [item for item in wandb if not any(_key(c) == _key(item) for c in self.common)]
        common = [item for item in self.common if _key(item) != "train.output_dir"]  # replaced by the folder
        return [*common, *trial.settings, f"train.output_dir={_text(str(self.folder))}",
                f"train.run_name={_text(trial.name)}", "train.resume=auto", *wandb]

    def command(self, trial: Trial) -> list[str]:
        trainer = ["-m", "cifarlab.train", *(["--config", self.base] if self.base else []), *self.overrides(trial)]
        if self.launch:
            return [sys.executable, "-m", "accelerate.commands.launch", *self.launch, *trainer]
        # One process needs no launcher, and Accelerate's one-process launcher would not pass signals on.
        return [sys.executable, *trainer]


def read_sweep(path: str, overrides: Sequence[str] = (), launch: Sequence[str] = ()) -> Sweep:
    """The sweep in ``path`` with extra ``overrides`` and launcher options for every trial; every trial's
    config is loaded, so a bad key or value in any of them fails here, before anything runs."""
    source = Path(path)
    spec = _load_file(source)
    where = f"sweep file {path}"
    name = spec.get("name", source.stem)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise UsageError(f"{where}: name: {name!r} must be a plain, non-empty folder name")
    base = _find_base(spec["base"], source) if spec.get("base") is not None else None
    ours = _override_list(spec.get("overrides", []), f"{where}: overrides")
    for item in ours:
        _check_settable(_key(item), f"{where}: overrides")
    for item in overrides:
        _check_settable(_key(item), "the command line")
    settings = _expand(spec, where)
    swept = {_key(s) for row in settings for s in row}
    clash = sorted(swept & {_key(item) for item in overrides})
    if clash:
        raise UsageError(f"{clash[0]} is swept by {where}; it cannot also be set on the command line")

    common = (*ours, *overrides)
    shared = _load(base, common, f"{where} (base and overrides)")
    launch_options = (*_launch_list(spec.get("launch", []), f"{where}: launch"), *launch)
    trials = tuple(Trial(i, trial_name, tuple(row)) for i, (trial_name, row) in enumerate(zip(_names(settings),
                                                                                               settings)))
    sweep = Sweep(name, source, base, common, launch_options, Path(shared.train.output_dir) / name, trials)
    configs = tuple(_load(base, sweep.overrides(t), f"{where}: trial {t.index} ({t.name})") for t in sweep.trials)
    return dataclasses.replace(sweep, configs=configs)


def _load_file(source: Path) -> dict[str, Any]:
    if not source.is_file():
        raise UsageError(f"sweep file {source}: no such file")
    loaded = _read_yaml(source)
    if not isinstance(loaded, dict):
        raise UsageError(f"sweep file {source}: not a YAML mapping of {', '.join(FILE_KEYS)}")
    unknown = [str(key) for key in loaded if key not in FILE_KEYS]
    if unknown:
        raise UsageError(f"sweep file {source}: unknown key '{unknown[0]}'; keys: {', '.join(FILE_KEYS)}")
    return {str(key): value for key, value in loaded.items()}


def _read_yaml(path: Path) -> Any:
    """A YAML file's contents, read as OmegaConf reads presets (so 1e-3 is a number here too)."""
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as error:  # PyYAML's errors (yaml is not imported here) and OmegaConf's
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{path}: not a YAML file ({reason})") from None


def _find_base(base: Any, source: Path) -> str:
    """A relative base is looked up in the current directory first (as --config would be), then beside
    the sweep file (so a sweep can name a preset next to it)."""
    if not isinstance(base, str) or not base:
        raise UsageError(f"sweep file {source}: base: {base!r} must be a path to a preset")
    for candidate in (Path(base), source.parent / base):
        if candidate.is_file():
            return str(candidate)
    raise UsageError(f"sweep file {source}: base {base}: no such file in the current directory or in "
                     f"{source.parent}")


def _override_list(value: Any, where: str) -> list[str]:
    """``[key=value, ...]`` or a mapping ``{key: value}``."""
    if isinstance(value, dict):
        return [f"{_check_key(key, where)}={_text(item)}" for key, item in value.items()]
    if not isinstance(value, list) or not all(isinstance(item, str) and "=" in item for item in value):
        raise UsageError(f"{where}: must be a list of key=value (e.g. [train.epochs=2]) or a mapping")
    return list(value)


def _launch_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, (str, int, float)) for item in value):
        raise UsageError(f"{where}: must be a list of accelerate launch options (e.g. [--num_processes 2])")
    return [word for item in value for word in shlex.split(str(item))]


def _expand(spec: dict[str, Any], where: str) -> list[list[str]]:
    """Each trial's own settings: every explicit trial x every grid point x every seed, in that order."""
    rows = _trial_rows(spec.get("trials"), where)
    grid = _grid(spec.get("grid"), where)
    seeds = _seeds(spec.get("seeds"), where)
    in_rows = {key for row in rows for key in row}
    for key in grid:
        if key in in_rows:
            raise UsageError(f"{where}: {key} is in both trials and grid; set it in one of them")
    if seeds and (SEED in grid or SEED in in_rows):
        raise UsageError(f"{where}: seeds sets {SEED}; remove it from trials and grid")
    expanded: list[list[str]] = []
    seen: dict[frozenset[str], int] = {}
    for row in rows:
        for point in itertools.product(*grid.values()):  # no grid: one empty point
            for seed in seeds or [None]:
                values = [*row.items(), *zip(grid, point), *([(SEED, seed)] if seed is not None else [])]
                settings = [f"{key}={_text(value)}" for key, value in values]
                if frozenset(settings) in seen:
                    raise UsageError(f"{where}: trials {seen[frozenset(settings)]} and {len(expanded)} are the "
                                     f"same ({' '.join(settings) or 'no overrides'})")
                seen[frozenset(settings)] = len(expanded)
                expanded.append(settings)
    return expanded


def _trial_rows(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return [{}]
    if not isinstance(value, list) or not value or not all(isinstance(row, dict) for row in value):
        raise UsageError(f"{where}: trials must be a non-empty list of mappings (e.g. [{{model.name: lenet}}])")
    for row in value:
        for key, item in row.items():
            _check_key(key, f"{where}: trials")
            _check_settable(key, f"{where}: trials", per_trial=True)
            _text(item)  # a value an override can hold
    return value


def _grid(value: Any, where: str) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise UsageError(f"{where}: grid must be a non-empty mapping of key: [values] (e.g. {{optim.lr: [0.01, 0.1]}})")
    for key, values in value.items():
        _check_key(key, f"{where}: grid")
        _check_settable(key, f"{where}: grid", per_trial=True)
        if not isinstance(values, list) or not values:
            raise UsageError(f"{where}: grid {key}: {values!r} must be a non-empty list of values, e.g. [1, 2]")
        for item in values:
            _text(item)
    return value


def _seeds(value: Any, where: str) -> list[Optional[int]]:
    if value is None:
        return []
    if (not isinstance(value, list) or not value
            or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in value)):
        raise UsageError(f"{where}: seeds must be a non-empty list of integers (e.g. [0, 1, 2])")
    if len(set(value)) != len(value):
        raise UsageError(f"{where}: seeds {value} repeats a seed")
    return value


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise UsageError(f"{where}: {key!r} is not a dotted config key (e.g. optim.lr)")
    return key


def _check_settable(key: str, where: str, per_trial: bool = False) -> None:
    if key in SET_BY_SWEEP:
        raise UsageError(f"{where}: {key} is set by the sweep (train.run_name: the trial's name; train.resume: auto)")
    if per_trial and key in NOT_SWEPT:
        raise UsageError(f"{where}: {key} cannot differ between trials; set it in overrides or on the command line")


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def _load(base: Optional[str], overrides: Sequence[str], where: str) -> Config:
    try:
        return load_config(base, list(overrides))
    except UsageError as error:
        raise UsageError(f"{where}: {error}") from None


# --- override values and trial names ----------------------------------------------------------------------------


def _text(value: Any, in_list: bool = False) -> str:
    """``value`` as the text of a ``key=value`` override that reads back as ``value`` (OmegaConf parses it as
    YAML): null, true, 0.01, 1e-05, [a,b]; a string only quoted where it would read as something else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_text(item, in_list=True) for item in value) + "]"  # no spaces: no shell quoting
    if isinstance(value, str):
        if _reads_back(value, in_list):
            return value
        return "'" + value.replace("'", "''") + "'"  # YAML's single quotes: nothing inside is special but '
    raise UsageError(f"{value!r} is not a value an override can set (a number, string, true/false, null or a list)")


def _reads_back(text: str, in_list: bool) -> bool:
    written, wanted = (f"[{text}]", [text]) if in_list else (text, text)
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={written}"]), resolve=False) == {"v": wanted}
    except Exception:  # PyYAML's errors (yaml is not imported here) and OmegaConf's: not a value
        return False


def _names(settings: list[list[str]]) -> list[str]:
    """Folder names that read in ``ls``: ``lr=0.01-seed=0``. Keys are shortened to their last component
    unless two swept keys share it; a name that would collide or run long gets a hash of its settings."""
    short = _short_keys(list(dict.fromkeys(_key(s) for row in settings for s in row)))
    names = ["-".join(f"{short[_key(s)]}={_safe(s.split('=', 1)[1])}" for s in row) or "base" for row in settings]
    taken = [name for name in names if names.count(name) > 1]
    return [f"{name[:NAME_LENGTH]}-{_digest(row)}" if len(name) > NAME_LENGTH or name in taken else name
            for name, row in zip(names, settings)]


def _short_keys(keys: list[str]) -> dict[str, str]:
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        short[key] = suffix
    return short


def _safe(text: str) -> str:
    """Filesystem- and shell-friendly: brackets, quotes and spaces go, anything unusual becomes _."""
    return re.sub(r"[^A-Za-z0-9._,+=@-]", "_", re.sub(r"[\[\]' ]", "", text)) or "_"


def _digest(settings: list[str]) -> str:
    return hashlib.sha1("\n".join(sorted(settings)).encode()).hexdigest()[:8]


# --- what is there already ------------------------------------------------------------------------------------


def conflict(sweep: Sweep, trial: Trial) -> Optional[str]:
    """Why the trial's run directory holds a run the trial must not continue (a one-line reason), or None. The
    trainer's own rule decides: settings that change how a run trains must match (cifarlab.config)."""
    run = sweep.run_dir(trial)
    if not run.config.is_file():
        return None
    try:
        there = load_config(str(run.config))
    except UsageError as error:
        return f"its config.yaml does not load ({error})"
    changes = resume_changes(there, sweep.configs[trial.index])
    keys = [key for key in changes if changes_course(key, there)]
    if not keys:
        return None
    return "holds a run of another configuration (" + ", ".join(
        f"{key}: {shown(changes[key][0])} there, {shown(changes[key][1])} here" for key in keys) + ")"


def status(sweep: Sweep, trial: Trial) -> str:
    if conflict(sweep, trial):
        return "other-config"
    run = sweep.run_dir(trial)
    return "finished" if run.finished() else "started" if run.root.exists() else "-"


def write_record(sweep: Sweep) -> None:
    """``<folder>/sweep.yaml``: each trial's index, name, overrides and command. Written whole and renamed
    into place; refused when the file there describes other trials (another sweep of the same name, or
    this one edited while array tasks may still map indices to the old trials)."""
    trials = [{"index": t.index, "name": t.name, "overrides": list(t.settings), "command": shlex.join(sweep.command(t))}
              for t in sweep.trials]
    text = OmegaConf.to_yaml({"name": sweep.name, "source": str(sweep.source), "base": sweep.base,
                              "trials": trials})
    if sweep.record.is_file():
        _check_same_trials(sweep, trials)
        if sweep.record.read_text() == text:
            return
    try:
        sweep.folder.mkdir(parents=True, exist_ok=True)
        # A name of its own: array tasks on several hosts may write at once (the same text).
        descriptor, temporary = tempfile.mkstemp(prefix=".sweep.yaml.", dir=sweep.folder)
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        files.publish(temporary, sweep.record)  # mkstemp's file is 0600
    except OSError as error:
        raise UsageError(f"cannot write {sweep.record} ({error.strerror}); choose a writable "
                         f"train.output_dir") from None


def _check_same_trials(sweep: Sweep, trials: list[dict[str, Any]]) -> None:
    def listed(entries: Any) -> list[tuple[Any, Any, Any]]:
        return [(t.get("index"), t.get("name"), t.get("overrides")) for t in entries if isinstance(t, dict)]

    document = _read_yaml(sweep.record)
    theirs = listed(document.get("trials") or []) if isinstance(document, dict) else []
    ours = listed(trials)
    if theirs == ours:
        return
    first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
    detail = (f"trial {first} there is {theirs[first][1]}, here {ours[first][1]}" if first < min(len(theirs), len(ours))
              else f"{len(theirs)} trials there, {len(ours)} here")
    raise UsageError(f"{sweep.record} lists other trials than {sweep.source} ({detail}): another sweep named "
                     f"'{sweep.name}'? Rename this one (name:) or set another train.output_dir")


# --- running trials -------------------------------------------------------------------------------------------


@dataclass
class Tally:
    finished: int = 0
    skipped: int = 0
    failed: int = 0
    refused: int = 0
    stopped: int = 0

    def summary(self) -> str:
        return (f"{self.finished} finished, {self.skipped} skipped (finished before), {self.failed} failed, "
                f"{self.refused} refused" + (f", {self.stopped} stopped" if self.stopped else ""))


@dataclass
class Running:
    trial: Trial
    process: subprocess.Popen[bytes]
    started: float
    log: IO[bytes]
    echo: Optional[Echo]


class Runner:
    """Runs trials, ``parallel`` at a time, each trainer writing to its log; serial runs echo the log to the
    console. SIGUSR1/SIGTERM/SIGINT are passed on to the running trainers (which checkpoint and exit 75, or
    130 for Ctrl-C) and no further trial starts."""

    def __init__(self, sweep: Sweep, parallel: int = 1) -> None:
        self.sweep = sweep
        self.parallel = parallel
        self.tally = Tally()
        self.running: list[Running] = []
        self.signalled: Optional[int] = None

    def run(self, trials: Sequence[Trial]) -> int:
        started = time.monotonic()
        handlers = {signum: signal.signal(signum, self._on_signal)
                    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
        try:
            queue = list(trials)
            while (queue and not self._stopping()) or self.running:
                while queue and len(self.running) < self.parallel and not self._stopping():
                    self._start(queue.pop(0))
                self._reap()
                if self.running:
                    time.sleep(0.1)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        self._say(f"{len(trials)} trial(s) in {time.monotonic() - started:.1f}s: {self.tally.summary()}"
                  + (f"; {len(queue)} not started" if queue else ""))
        if self.signalled == signal.SIGINT:
            return 130
        if self.tally.stopped or self.signalled is not None:
            return Preempted.exit_code
        return 1 if self.tally.failed or self.tally.refused else 0

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self.signalled = signum
        # The trainers checkpoint and stop on each of these signals (after a terminal's Ctrl-C, which reached
        # them too, they take this copy for the same one).
        for running in self.running:
            try:
                running.process.send_signal(signum)
            except ProcessLookupError:
                pass

    def _stopping(self) -> bool:
        return self.signalled is not None or self.tally.stopped > 0

    def _say(self, message: str) -> None:
        print(f"sweep {self.sweep.name}: {message}", flush=True)

    def _start(self, trial: Trial) -> None:
        label = f"trial {trial.index} {trial.name}"
        reason = conflict(self.sweep, trial)
        if reason is not None:
            self.tally.refused += 1
            self._say(f"{label}: refused: {self.sweep.run_dir(trial).root} {reason}; move it away or give "
                      f"the sweep another name")
            return
        if self.sweep.run_dir(trial).finished():
            self.tally.skipped += 1
            self._say(f"{label}: skipped, finished before")
            return
        log_path = self.sweep.log(trial)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - open while the trial runs, closed in _reap
        command = self.sweep.command(trial)
        log.write(f"\n=== cifarlab.sweep: trial {trial.index} started {time.ctime()}\n$ {shlex.join(command)}\n"
                  .encode())
        log.flush()
        # The trainer writes to the log file itself, not through a pipe to this process: it never depends on
        # this process staying alive to write its output. Another process training the same trial (a second
        # sweep) is kept out by the trainer's run lock.
        echo = Echo(log_path, log.tell()) if self.parallel == 1 else None
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self._environment())
        self.running.append(Running(trial, process, time.monotonic(), log, echo))
        self._say(f"{label}: started; log {log_path}")

    def _environment(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log follows the run, line by line
        # torchrun's agent (several processes) dies on SIGUSR1 unless told to handle it; handled, it passes it on.
        env.setdefault("PET_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
        if self.parallel > 1 and not self.sweep.launch:
            # The trainer gives each of LOCAL_WORLD_SIZE processes an equal share of the cores
            # (cifarlab.run.engine.build_accelerator): trials side by side split them the same way. Launched
            # trials get theirs from torchrun, which sets LOCAL_WORLD_SIZE itself (see docs/sweeps.md).
            env["LOCAL_WORLD_SIZE"] = str(self.parallel)
        return env

    def _reap(self) -> None:
        for running in [r for r in self.running if r.process.poll() is not None]:
            self.running.remove(running)
            if running.echo is not None:
                running.echo.finish()
            running.log.close()
            self._report(running, running.process.returncode, time.monotonic() - running.started)

    def _report(self, running: Running, code: int, seconds: float) -> None:
        label = f"trial {running.trial.index} {running.trial.name}"
        # Stopped: the trainer saved and exited 75 (130 for Ctrl-C). After a stop signal any other end counts
        # too: torchrun's agent exits 1 once its workers have saved and stopped, and a trainer signalled
        # before it handles signals dies of the signal.
        if code in STOPPED or (self.signalled is not None and code != 0):
            self.tally.stopped += 1
            self._say(f"{label}: stopped (exit {code}) after {seconds:.1f}s; run the sweep again to continue it")
        elif code == 0:
            self.tally.finished += 1
            self._say(f"{label}: finished in {seconds:.1f}s")
        else:
            self.tally.failed += 1
            shown = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            self._say(f"{label}: failed ({shown}) after {seconds:.1f}s; log {self.sweep.log(running.trial)}")


class Echo:
    """Copies what a trial appends to its log (from ``offset`` on) to the console, as it comes, until
    :meth:`finish`."""

    def __init__(self, path: Path, offset: int) -> None:
        self._source = open(path, "rb")  # noqa: SIM115 - read by the thread, closed in finish
        self._source.seek(offset)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._copy, daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        while True:
            done = self._done.is_set()  # read before the file: what was written before the end is then read
            chunk = self._source.read()
            if chunk:
                sys.stdout.write(self._decoder.decode(chunk))
                sys.stdout.flush()
            elif done:
                return
            else:
                time.sleep(0.05)

    def finish(self) -> None:
        """The trainer has exited: copy the rest, then stop."""
        self._done.set()
        self._thread.join()
        self._source.close()


# --- the command line -----------------------------------------------------------------------------------------

USAGE = ("python -m cifarlab.sweep [-h] [--list | --count | --dry-run] [--trial I] [--parallel N] SWEEP.yaml "
         "[key=value ...] [accelerate launch options]")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options and key=value overrides, and the rest: options for ``accelerate launch``, which must come
    after SWEEP.yaml (``--num_processes 2``: a word without = after an option is that option's value)."""
    parser = argparse.ArgumentParser(prog="cifarlab.sweep", usage=USAGE, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="print the trials: index, status, name, overrides")
    mode.add_argument("--count", action="store_true", help="print the number of trials (for sbatch --array)")
    mode.add_argument("--dry-run", action="store_true", help="print each trial's command instead of running it")
    parser.add_argument("--trial", type=int, metavar="I", help="only trial I (0-based; a SLURM array task id)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="run N trials at a time (default 1)")
    parser.add_argument("sweep", metavar="SWEEP.yaml", help="the sweep file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every trial")
    ours: list[str] = []
    launch: list[str] = []
    positional: list[str] = []
    words = list(argv)
    while words:
        word = words.pop(0)
        if word in ("-h", "--help", "--list", "--count", "--dry-run") or word.startswith(("--trial=", "--parallel=")):
            ours.append(word)
        elif word in ("--trial", "--parallel"):
            ours += [word, *words[:1]]
            del words[:1]
        elif word.split("=")[0] in ("--config", "--print-config", "--quiet"):
            # Trainer options: accelerate launch would take --config for its --config_file, -q for its own.
            parser.error(f"{word} is an option of cifarlab.train; in a sweep the preset is base: in the sweep file, "
                         f"--quiet is the override logging.level=warning and --dry-run shows the commands")
        elif word.startswith("-") and positional:
            launch.append(word)
            if words and not words[0].startswith("-") and "=" not in words[0]:
                launch.append(words.pop(0))
        elif word.startswith("-"):
            parser.error(f"{word}: accelerate launch options come after SWEEP.yaml")
        elif positional and "=" not in word:
            parser.error(f"unexpected {word!r}: overrides are key=value, launcher options come as --name value")
        else:
            positional.append(word)
    return parser.parse_args([*ours, *positional]), launch


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, launch = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.parallel < 1:
            raise UsageError(f"--parallel {args.parallel}: run at least 1 trial at a time")
        sweep = read_sweep(args.sweep, args.overrides, launch)
        trials = list(sweep.trials)
        if args.trial is not None:
            if not 0 <= args.trial < len(trials):
                raise UsageError(f"--trial {args.trial}: {args.sweep} has {len(trials)} trials (0-{len(trials) - 1})")
            trials = [trials[args.trial]]
        if args.count:
            print(len(sweep.trials))
            return 0
        if args.list:
            for trial in trials:
                print(f"{trial.index}\t{status(sweep, trial)}\t{trial.name}\t{' '.join(trial.settings)}")
            return 0
        if args.dry_run:
            for trial in trials:
                print(f"{trial.index}\t{shlex.join(sweep.command(trial))}")
            return 0
        write_record(sweep)
    except UsageError as error:
        console.error(str(error))
        return error.exit_code
    print(f"sweep {sweep.name}: {len(trials)} of {len(sweep.trials)} trial(s) in {sweep.folder}, "
          f"{min(args.parallel, len(trials))} at a time", flush=True)
    return Runner(sweep, min(args.parallel, len(trials))).run(trials)


def cli() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... --list | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    cli()
