"""Stopping on a signal: SIGUSR1 / SIGTERM -> agreed stop at a step boundary -> checkpoint -> requeue.

SLURM warns a job with a signal before a preemption or its time limit (``--signal``), then sends
SIGTERM. Either signal only sets a flag here; the train loop asks at each optimizer-step boundary
whether *any* rank got one (an all-reduce, so every rank stops at the same step), saves a
checkpoint, and exits with code 75 (:class:`cifarlab.errors.Preempted`). Under SLURM the main process first requeues the
job, and the requeued job resumes from that checkpoint (``train.resume=auto``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from types import FrameType
from typing import Any, Optional

from accelerate import Accelerator

from cifarlab.checkpoint import Checkpointer, TrainState
from cifarlab.errors import Preempted

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
CHECK_EVERY = 8
"""With several processes, steps between checks for a stop signal (a signal waits at most this long)."""


class StopRequest:
    """Records SIGUSR1/SIGTERM while active (a context manager: the previous handlers come back on exit,
    so a run can be started in-process from tests or a notebook) and turns it into a stop all ranks agree on.
    """

    def __init__(self, accelerator: Accelerator, log: Callable[[str], None]) -> None:
        self.accelerator = accelerator
        self.log = log
        self.received: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.received = signal.Signals(signum).name

    def agreed(self, step: Optional[int] = None) -> bool:
        """True on every rank once any rank has received a signal. Call on all ranks at the same points.

        Several processes agree through an all-reduce whose result the host must wait for; so that
        this does not stall the GPU queue every step, they compare notes only every
        ``CHECK_EVERY`` steps (always when ``step`` is None). One process just looks at its flag.
        """
        if self.accelerator.num_processes == 1:
            return self.received is not None
        if step is not None and step % CHECK_EVERY:
            return False
        if self.received:
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()

    def stop_if_agreed(self, state: TrainState, checkpointer: Checkpointer, step: Optional[int] = None) -> None:
        """After a stop signal: make sure this step is checkpointed, requeue under SLURM, raise :class:`Preempted`.
        Call between optimizer steps, where the state is complete (``step``: see :meth:`agreed`)."""
        if not self.agreed(step):
            return
        path = checkpointer.ensure_saved(state)
        self.log(f"stopping on {self.received or 'a signal to another process'}: checkpoint {path} saved")
        if self.accelerator.is_main_process:
            requeue_slurm_job(self.log)
        raise Preempted()


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
    else:
        # A preemption with PreemptMode=REQUEUE requeues the job itself; scontrol may then refuse.
        log(f"scontrol requeue {job} failed ({(result.stderr or result.stdout).strip()}); "
            f"SLURM may requeue it itself (preemption), else resubmit with train.resume=auto")
