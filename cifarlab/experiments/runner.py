"""Running a sweep's trials: what is there already (finished, resumable, a run of another configuration: refused),
the sweep's record of its trials (sweep.yaml), and the runner that starts trainers one or N at a time, forwards stop
signals, appends each trial's output to logs/ and tallies the outcome. Trainers run as subprocesses: no torch here."""

from __future__ import annotations

import codecs
import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Optional

from omegaconf import OmegaConf

from cifarlab import files
from cifarlab.config import load_config, shown
from cifarlab.errors import Preempted, UsageError
from cifarlab.experiments.record import Trial, absolute, changes, document, read_record
from cifarlab.experiments.spec import Sweep
from cifarlab.report import console
from cifarlab.run.rundir import TRAINER_STATE, RunDir

STOPPED = (Preempted.exit_code, 130)
"""Exit codes of a trainer that was stopped (a signal, Ctrl-C) and resumes when run again."""


def say(sweep: Sweep, message: str) -> None:
    """A line of the sweep's progress on stdout (a single-process command: its output is the product, no rank
    policy needed)."""
    print(console.terminal_line(f"sweep {sweep.name}: {message}", indent=4), flush=True)


# --- what is there already ------------------------------------------------------------------------------------


def conflict(sweep: Sweep, trial: Trial) -> Optional[str]:
    """Why the trial's run directory holds a run the trial must not continue (a one-line reason), or None. The
    trainer's own identity rule decides (cifarlab.identity.run_changes): what it would refuse, the sweep refuses; and
    a swept key is the trial's identity even where a run may change it (cifarlab.experiments.record.changes)."""
    run = sweep.run_dir(trial)
    if not run.config.is_file():
        return None
    try:
        there = load_config(str(run.config))
    except UsageError as error:
        return f"its config.yaml does not load ({error})"
    refused = changes(there, sweep.configs[trial.index], sweep.swept)
    if not refused:
        return None
    return "holds a run of another configuration (" + ", ".join(
        f"{key}: {shown(old)} there, {shown(new)} here" for key, (old, new) in refused.items()) + ")"


def finished(sweep: Sweep, trial: Trial) -> bool:
    """Whether the trial has finished: its run directory holds a finished run, and that run is the trial's."""
    return sweep.run_dir(trial).finished() and conflict(sweep, trial) is None


def status(sweep: Sweep, trial: Trial) -> str:
    """The state ``--list`` shows: finished, interrupted at step N (a checkpoint to resume from), failed (the last
    attempt under a sweep exited with an error), interrupted with no checkpoint, not started; other config (a run
    the trial must not continue); "not in the file (...)" for a recorded trial the sweep file no longer lists."""
    if trial in sweep.removed:
        return f"not in the file ({_progress(sweep, trial)})"
    if conflict(sweep, trial):
        return "other config"
    return _progress(sweep, trial)


def _progress(sweep: Sweep, trial: Trial) -> str:
    run = sweep.run_dir(trial)
    if run.finished():
        return "finished"
    last = _read_json(sweep.outcome(trial))
    if last.get("result") == "failed":
        return f"failed ({last.get('how', 'exit code ?')})"
    step = checkpoint_step(run)
    if step is not None:
        return f"interrupted at step {step}"
    return "interrupted, no checkpoint" if run.root.exists() else "not started"


def checkpoint_step(run: RunDir) -> Optional[int]:
    """The step of the run's newest checkpoint (the one ``checkpoints/latest`` names, else the newest step folder;
    its trainer_state.json); None before the first. Read without loading anything (no torch)."""
    named = [run.checkpoints / run.latest.read_text().strip()] if run.latest.is_file() else []
    for folder in [*named, *reversed(run.step_checkpoints())]:
        state = _read_json(folder / TRAINER_STATE)
        if isinstance(state.get("global_step"), int):
            return int(state["global_step"])
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_record(sweep: Sweep) -> None:
    """``<folder>/sweep.yaml`` (cifarlab.experiments.record): every trial, the file's and those it no longer lists,
    with its command, and each version of the file. Written whole and renamed into place; nothing is written when
    nothing changed. Refused when another sweep process has meanwhile recorded other trials (the file was edited
    while array tasks were starting): indices would then disagree, so run again."""
    there = read_record(sweep.record)
    ours = {t.index: (t.name, t.settings) for t in (*sweep.trials, *sweep.removed)}
    seen = sweep.history.mapping() if sweep.history is not None else None
    if there is not None and there.mapping() not in (seen, ours):
        raise UsageError(f"{sweep.record} was changed by another sweep process while this one started (was "
                         f"{sweep.source} edited meanwhile?); run the sweep again")
    commands = {**(there.commands if there is not None else {}),
                **{t.index: shlex.join(sweep.command(t)) for t in sweep.trials}}
    version = {"source": str(sweep.source), "base": absolute(sweep.base), "overrides": list(sweep.common),
               "trials": [t.index for t in sweep.trials]}
    text = OmegaConf.to_yaml(document(there, sweep.name, [*sweep.trials, *sweep.removed], commands, version))
    if sweep.record.is_file() and sweep.record.read_text() == text:
        return
    try:
        sweep.folder.mkdir(parents=True, exist_ok=True)
        write_whole(sweep.record, text)
    except OSError as error:
        raise UsageError(f"cannot write {sweep.record} ({error.strerror}); choose a writable "
                         f"train.output_dir") from None


def write_whole(path: Path, text: str) -> None:
    """Written whole under a name of its own (array tasks on several hosts may write at once), then renamed."""
    files.write_whole(path, text)


# --- running trials -------------------------------------------------------------------------------------------


@dataclass
class Tally:
    finished: int = 0
    skipped: int = 0
    failed: int = 0
    refused: int = 0
    stopped: int = 0

    def total(self) -> int:
        return self.finished + self.skipped + self.failed + self.refused + self.stopped

    def summary(self) -> str:
        return (f"{self.finished} finished, {self.skipped} skipped (finished before), {self.failed} failed, "
                f"{self.refused} refused" + (f", {self.stopped} stopped" if self.stopped else ""))

    def exit_code(self, not_started: int, signalled: Optional[int]) -> int:
        """0: every trial finished (now or before); 1: some failed or were refused; 75: some were stopped, or left
        unstarted after a stop signal (130 when that was Ctrl-C). The trials' results alone decide: a signal that
        came after the last trial had ended, with nothing left to run, changes nothing."""
        if self.stopped or not_started:
            return 130 if signalled == signal.SIGINT else Preempted.exit_code
        return 1 if self.failed or self.refused else 0


class Feed:
    """Where a :class:`Runner`'s trials come from and what is told when each ends: here a sweep's list, taken in
    order (a search's study feeds its sampled trials: cifarlab.experiments.study)."""

    def __init__(self, trials: Sequence[Trial] = ()) -> None:
        self.queue = list(trials)

    def take(self) -> Optional[Trial]:
        """The next trial to run; None when there is none (now)."""
        return self.queue.pop(0) if self.queue else None

    def left(self) -> int:
        """Trials still to run after a stop (the exit code says so)."""
        return len(self.queue)

    def ended(self, trial: Trial, result: str) -> None:
        """The trial's attempt ended: finished, skipped (finished before), failed, refused or stopped."""

    def waiting(self) -> bool:
        """Whether trials this feed cannot give yet will come (the runner then keeps asking instead of ending)."""
        return False

    def environment(self, trial: Trial) -> dict[str, str]:
        """Extra environment variables for the trial's trainer."""
        return {}


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
        self.feed = Feed()

    def run(self, trials: Sequence[Trial] | Feed) -> int:
        started = time.monotonic()
        self.feed = trials if isinstance(trials, Feed) else Feed(trials)
        handlers = {signum: signal.signal(signum, self._on_signal)
                    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
        try:
            exhausted = False
            while not exhausted or self.running:
                while len(self.running) < self.parallel and not self._stopping():
                    trial = self.feed.take()
                    if trial is None:
                        break
                    self._start(trial)  # or refused, or skipped: then take the next one at once
                exhausted = self._stopping() or (len(self.running) < self.parallel and not self.feed.waiting())
                self._reap()
                if self.running or not exhausted:
                    time.sleep(0.1)
            # Still under our handlers: a Ctrl-C from here on is recorded, not raised, and changes no result.
            left = self.feed.left() if self._stopping() else 0
            self._say(f"{self.tally.total()} trial(s) in {time.monotonic() - started:.1f}s: {self.tally.summary()}"
                      + (f"; {left} not started" if left else ""))
            return self.tally.exit_code(left, self.signalled)
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)

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
        say(self.sweep, message)

    def _start(self, trial: Trial) -> None:
        label = f"trial {trial.index} {trial.name}"
        reason = conflict(self.sweep, trial)
        if reason is not None:
            self.tally.refused += 1
            self._say(f"{label}: refused: {files.typed(self.sweep.run_dir(trial).root)} {reason}; move it away or give "
                      f"the sweep another name")
            self.feed.ended(trial, "refused")
            return
        if self.sweep.run_dir(trial).finished():
            self.tally.skipped += 1
            self._say(f"{label}: skipped, finished before")
            self.feed.ended(trial, "skipped")
            return
        log_path = self.sweep.log(trial)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:  # open while the trial runs, closed in _reap; a link planted there is not written through
            log = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666), "ab")
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            self.tally.refused += 1
            self._say(f"{label}: refused: its log {files.typed(log_path)} is a symbolic link, not a log cifarlab "
                      f"made; remove it")
            self.feed.ended(trial, "refused")
            return
        command = self.sweep.command(trial)
        log.write(f"\n=== cifarlab.sweep: trial {trial.index} started {time.ctime()}\n$ {shlex.join(command)}\n"
                  .encode())
        log.flush()
        step = checkpoint_step(self.sweep.run_dir(trial))
        self._record(trial, {"result": "started", "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        # The trainer writes to the log file itself, not through a pipe to this process: it never depends on
        # this process staying alive to write its output. Another process training the same trial (a second
        # sweep) is kept out by the trainer's run lock.
        echo = Echo(log_path, log.tell()) if self.parallel == 1 else None
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**self._environment(), **self.feed.environment(trial)})
        self.running.append(Running(trial, process, time.monotonic(), log, echo))
        verb = "started" if step is None else f"resumed from its checkpoint at step {step}"
        self._say(f"{label}: {verb}; log {files.typed(log_path)}")

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
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        run = self.sweep.run_dir(running.trial)
        done = code == 0 and run.finished()
        if code == 0 and not done:
            # A trainer that ends its run writes the final weights last (a pruned or target-reached run too): an
            # exit 0 without them trained nothing this trial can count.
            how = f"exit code 0 but no {run.weights.name}: its run did not finish"
        if code in STOPPED or (self.signalled is not None and code != 0):
            self.tally.stopped += 1
            result = "stopped"
            self._say(f"{label}: stopped (exit {code}) after {seconds:.1f}s; run the sweep again to continue it")
        elif done:
            self.tally.finished += 1
            result = "finished"
            self._say(f"{label}: finished in {seconds:.1f}s")
        else:
            self.tally.failed += 1
            result = "failed"
            self._say(f"{label}: failed ({how}) after {seconds:.1f}s; log {files.typed(self.sweep.log(running.trial))}")
        self._record(running.trial, {"result": result, "how": how, "seconds": round(seconds, 1),
                                     "ended": time.strftime("%Y-%m-%d %H:%M:%S")})
        self.feed.ended(running.trial, result)

    def _record(self, trial: Trial, outcome: dict[str, Any]) -> None:
        """The trial's outcome file (``--list`` reads it): how its last attempt ended, or that one has started."""
        try:
            self.sweep.outcome(trial).parent.mkdir(parents=True, exist_ok=True)
            write_whole(self.sweep.outcome(trial), json.dumps(outcome) + "\n")
        except OSError as error:  # the trial's result stands; only --list will know less
            self._say(f"cannot write {self.sweep.outcome(trial)} ({error.strerror})")


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
        pending = ""  # on a terminal, the start of a line not yet whole: lines are wrapped whole
        while True:
            done = self._done.is_set()  # read before the file: what was written before the end is then read
            chunk = self._source.read()
            if chunk:
                pending = self._write(pending + self._decoder.decode(chunk))
            elif done:
                self._write(pending + "\n" if pending else "")
                return
            else:
                time.sleep(0.05)

    @staticmethod
    def _write(text: str) -> str:
        """Write ``text`` out, on a terminal its whole lines wrapped at spaces (console.terminal_line: the trainer
        logged into a file, one line a message); return what is left of a line not yet whole."""
        if not sys.stdout.isatty():
            sys.stdout.write(text)
            sys.stdout.flush()
            return ""
        *lines, rest = text.split("\n")
        for line in lines:
            stamp = console.STAMPED.match(line)  # a trainer's log line goes on under its message
            sys.stdout.write(console.terminal_line(line, indent=stamp.end() if stamp else 0) + "\n")
        sys.stdout.flush()
        return rest

    def finish(self) -> None:
        """The trainer has exited: copy the rest, then stop."""
        self._done.set()
        self._thread.join()
        self._source.close()
