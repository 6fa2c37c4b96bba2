"""Stopping on a signal: SIGUSR1 / SIGTERM / SIGINT -> agreed stop at a step boundary -> checkpoint -> requeue.

SLURM warns a job with a signal before a preemption or its time limit (``--signal``), then sends
SIGTERM. Any of these signals only sets a flag here; the train loop asks at each optimizer-step boundary
whether *any* rank got one (an all-reduce, so every rank stops at the same step), saves a
checkpoint, says the command that continues the run (:func:`cifarlab.run.rundir.resume_command`) and exits with
code 75 (:class:`cifarlab.errors.Preempted`). Under SLURM the main process first requeues the job, and the requeued
job resumes from that checkpoint (``train.resume=auto``).

Ctrl-C (SIGINT) stops the same way but exits with 130 and is never requeued; a second Ctrl-C aborts at once
(:class:`cifarlab.errors.Aborted`, saying the same command).
A launcher forwards the terminal's SIGINT to its workers, which then see it twice within moments: a
second SIGINT counts only after :data:`SECOND_CTRL_C_AFTER` seconds.

A trainer whose launcher dies (``accelerate launch`` killed, torchrun's agent gone) gets SIGTERM from the
kernel (:func:`stop_when_orphaned`) and stops the same way, rather than train on unwatched.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Optional

from cifarlab import files
from cifarlab.errors import Aborted, Interrupted, Preempted
from cifarlab.run.rundir import RunDir, resume_command

if TYPE_CHECKING:  # no torch at import: cifarlab.train calls stop_when_orphaned before its fast paths
    from accelerate import Accelerator

    from cifarlab.run.checkpoint import Checkpointer
    from cifarlab.run.state import TrainState

SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
SECOND_CTRL_C_AFTER = 2.0
"""Seconds after a first SIGINT before another one aborts (a launcher's forwarded copy comes sooner)."""
CHECK_EVERY = 8
"""With several processes, steps between checks for a stop signal until the step time is known (see
:meth:`StopRequest.agreed`)."""
CHECK_WITHIN_S = 5.0
"""With several processes, seconds of training between checks for a stop signal once the step time is known: a
signal waits at most this long plus a step before the save starts. torchrun's agent kills its workers 30 s after
forwarding a signal, so this, the step and the checkpoint's save must fit in 30 s (bench/stop_check.py measures
what a check costs)."""


def check_interval(step_seconds: float, within_s: float = CHECK_WITHIN_S) -> int:
    """Steps between stop checks for steps of ``step_seconds``: as many as fit in ``within_s``, at least 1."""
    if not step_seconds > 0:  # no time measured (or NaN): keep the fixed count
        return CHECK_EVERY
    return max(1, int(within_s / step_seconds))


class EarlyCtrlC:
    """SIGINT while a trainer imports torch, numpy and Accelerate (its first seconds): recorded, not raised.

    Python's own handler raises KeyboardInterrupt wherever the main thread is, and an import cut short leaves a
    package half-initialised: numpy's ``dtypes`` then looked itself up until a RecursionError (40 lines in a sweep's
    trial log, exit 1), or its core refused to load twice. A sweep's trainer gets each Ctrl-C twice (the terminal's,
    the sweep's copy). :meth:`release`, once the imports are done, puts Python's handler back and raises a recorded
    Ctrl-C there, where cifarlab.train stops cleanly (exit 130, one line). Only the imports: a wait that follows
    (a process group forming) stays interruptible."""

    def __init__(self) -> None:
        self.pressed = False
        self.previous: Any = signal.default_int_handler

    def __call__(self, signum: int, frame: Optional[FrameType]) -> None:
        self.pressed = True

    @classmethod
    def install(cls) -> EarlyCtrlC:
        """Record SIGINT from now on, unless it is ignored (a shell's background job): then it stays so."""
        handler = cls()
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            handler.previous = signal.signal(signal.SIGINT, handler)
        return handler

    def release(self) -> None:
        """The handler from before again (:meth:`restore`); then the Ctrl-C recorded so far, as Python would have
        raised it."""
        self.restore()
        if self.pressed:
            raise KeyboardInterrupt

    def restore(self) -> None:
        """The SIGINT handler from before :meth:`install`, where this one is still installed (a refusal, the end)."""
        previous = self.previous  # (read first: mypy narrows self to the handler types after the `is`)
        if signal.getsignal(signal.SIGINT) is self:
            signal.signal(signal.SIGINT, previous)


class StopRequest:
    """Records SIGUSR1/SIGTERM while active (a context manager: the previous handlers come back on exit,
    so a run can be started in-process from tests or a notebook) and turns it into a stop all ranks agree on.
    ``run``: the run directory, for the command a second Ctrl-C names.
    """

    def __init__(self, accelerator: Accelerator, log: Callable[[str], None], run: Optional[RunDir] = None) -> None:
        self.accelerator = accelerator
        self.log = log
        self.run = run
        self.received: Optional[str] = None
        """The first signal this process got, by name."""
        self._interrupted_at: Optional[float] = None
        self._previous: dict[int, Any] = {}
        self.check_every = CHECK_EVERY
        """Steps between checks with several processes: :data:`CHECK_EVERY`, then :func:`check_interval` of the
        measured step time (the same on every rank)."""
        self._last_check: Optional[tuple[int, float]] = None  # (step, monotonic seconds) of the last timed check
        self._timed = False  # check_every has been set from the step time

    def __enter__(self) -> StopRequest:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._interrupted_at is not None and now - self._interrupted_at > SECOND_CTRL_C_AFTER:
                # The second Ctrl-C: abort now (cifarlab.train prints the message as its one line).
                known = self.run is not None and self.run.config.is_file()  # else it has saved nothing yet
                raise Aborted("aborted by Ctrl-C" + (f"; continue from the last checkpoint with "
                                                     f"{resume_command(self.run)}" if self.run and known else ""))
            self._interrupted_at = self._interrupted_at or now
        self.received = self.received or signal.Signals(signum).name

    def agreed(self, step: Optional[int] = None) -> bool:
        """True on every rank once any rank has received a signal. Call on all ranks at the same points.

        Several processes agree through an all-reduce whose result the host must wait for; so that
        this does not stall the GPU queue every step, they compare notes only every :attr:`check_every` steps
        (always when ``step`` is None). That is :data:`CHECK_EVERY` steps at first; the two checks after it
        time the steps between them (each check waits for the device, so the time is the steps' real time),
        and from then on every rank checks every :func:`check_interval` of the slowest rank's step time: the
        ranks agree on it once, through one gather, at the same step. One process just looks at its flag.
        """
        if self.accelerator.num_processes == 1:
            return self.received is not None
        if step is not None and step % self.check_every:
            return False
        if self.received:
            self.accelerator.set_trigger()
        stop = self.accelerator.check_trigger()
        if not stop:
            self._time_steps(step)
        return stop

    def _time_steps(self, step: Optional[int]) -> None:
        """After a check at ``step`` (all ranks): set :attr:`check_every` from the time since the previous check,
        once. A check between epochs (``step`` None) restarts the timing: an evaluation is no training step."""
        if self._timed:
            return
        now = time.monotonic()
        if step is None or self._last_check is None:
            self._last_check = None if step is None else (step, now)
            return
        if step <= self._last_check[0]:
            return  # the same step twice
        import torch  # here, not at import: cifarlab.train imports this module before torch for its fast paths

        seconds = torch.tensor([(now - self._last_check[1]) / (step - self._last_check[0])],
                               device=self.accelerator.device)
        slowest = float(self.accelerator.gather(seconds).max())
        self.check_every, self._timed = check_interval(slowest), True
        self.log(f"checking for stop signals every {self.check_every} steps ({slowest:.3f} s per step on the slowest "
                 f"of {self.accelerator.num_processes} processes)")

    def stop_if_agreed(self, state: TrainState, checkpointer: Checkpointer, step: Optional[int] = None) -> None:
        """After a stop signal: make sure this step is checkpointed, requeue under SLURM, raise :class:`Preempted`.
        Call between optimizer steps, where the state is complete (``step``: see :meth:`agreed`)."""
        if not self.agreed(step):
            return
        path = checkpointer.ensure_saved(state)
        self.log(f"stopped on {self.received or 'a signal to another process'} at step {state.global_step}: "
                 f"checkpoint {files.typed(path)} saved; continue with {resume_command(checkpointer.run)}")
        if self.received == "SIGINT":
            raise Interrupted()
        if self.accelerator.is_main_process:
            requeue_slurm_job(self.log)
        raise Preempted()


PR_SET_PDEATHSIG = 1
"""prctl option: the signal the kernel sends this process when the thread that started it exits."""


def stop_when_orphaned() -> None:
    """Ask Linux to send this process SIGTERM when its parent (the launcher, torchrun's agent, a shell, a
    sweep) dies, so that it checkpoints and stops instead of training on as an orphan. Elsewhere: nothing.

    Call it first thing: a parent that died before the call goes unnoticed (the process has been reparented).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl (an unusual libc): the trainer is then only stopped by signals sent to it


def slurm_job_id() -> Optional[str]:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for an array task, else the job id."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job(log: Callable[[str], None]) -> None:
    """Ask SLURM to run this job again (call on the main process only). Outside SLURM: nothing."""
    job = slurm_job_id()
    if job is None:
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log(f"could not requeue SLURM job {job}: {error}")
        return
    if result.returncode == 0:
        log(f"requeued SLURM job {job}")
    elif result.returncode < 0:  # scontrol was killed with the job it requeued: the requeue is under way
        log(f"requeue of SLURM job {job} requested")
    else:
        # A preemption with PreemptMode=REQUEUE requeues the job itself; scontrol may then refuse.
        log(f"scontrol requeue {job} failed ({(result.stderr or result.stdout).strip()}); "
            f"SLURM may requeue it itself (preemption), else continue the run with the command above")
