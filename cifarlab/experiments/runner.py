"""Running a sweep's trials: what is there already (finished, resumable, a run of another configuration: refused),
the sweep's record of its trials (sweep.yaml), and the runner that starts trainers one or N at a time, forwards stop
signals, appends each trial's output to logs/ and tallies the outcome. Trainers run as subprocesses: no torch here."""

from __future__ import annotations

import codecs
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Optional

from omegaconf import OmegaConf

from cifarlab import files
from cifarlab.config import load_config, run_changes, shown
from cifarlab.errors import Preempted, UsageError
from cifarlab.experiments.spec import Sweep, Trial, read_yaml

STOPPED = (Preempted.exit_code, 130)
"""Exit codes of a trainer that was stopped (a signal, Ctrl-C) and resumes when run again."""


# --- what is there already ------------------------------------------------------------------------------------


def conflict(sweep: Sweep, trial: Trial) -> Optional[str]:
    """Why the trial's run directory holds a run the trial must not continue (a one-line reason), or None. The
    trainer's own identity rule decides (cifarlab.config.run_changes): what it would refuse, the sweep refuses."""
    run = sweep.run_dir(trial)
    if not run.config.is_file():
        return None
    try:
        there = load_config(str(run.config))
    except UsageError as error:
        return f"its config.yaml does not load ({error})"
    refused = run_changes(there, sweep.configs[trial.index]).refused
    if not refused:
        return None
    return "holds a run of another configuration (" + ", ".join(
        f"{key}: {shown(old)} there, {shown(new)} here" for key, (old, new) in refused.items()) + ")"


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

    document = read_yaml(sweep.record)
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
