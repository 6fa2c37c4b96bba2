"""cifarlab.run.preemption: how often several processes check for a stop signal (the cadence rule); stop signals once
a run has finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

from cifarlab.run import preemption
from cifarlab.run.preemption import CHECK_EVERY, CHECK_WITHIN_S, StopRequest, check_interval

from conftest import CONFIGS, cli_env, signal_handlers_kept, smoke

pytestmark = pytest.mark.unit


def test_check_interval_fits_the_steps_into_the_time_between_checks() -> None:
    assert CHECK_WITHIN_S + 1 + 20 <= 30  # the time between checks, a slow step and a save fit torchrun's 30 s grace
    assert check_interval(0.05) == 100  # fast steps: every 100th, 5 s apart
    assert check_interval(0.3) == 16
    assert check_interval(5.0) == 1 and check_interval(60.0) == 1  # slow steps: every step
    assert check_interval(0.0) == CHECK_EVERY and check_interval(float("nan")) == CHECK_EVERY  # nothing measured
    assert check_interval(0.05, within_s=1.0) == 20


class TwoRanks:
    """Accelerate's side of the checks as two processes see it, from rank 0 (the module under test is real): the
    flag all-reduce of ``check_trigger``, and a ``gather`` that adds the other rank's step time."""

    num_processes = 2
    device = torch.device("cpu")

    def __init__(self, other_rank_step_s: float) -> None:
        self.other = other_rank_step_s
        self.flag = False
        self.collectives: list[str] = []

    def set_trigger(self) -> None:
        self.flag = True

    def check_trigger(self) -> bool:
        self.collectives.append("check")
        flag, self.flag = self.flag, False
        return flag

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self.collectives.append("gather")
        return torch.cat([tensor, torch.tensor([self.other])])


def checks(stop: StopRequest, steps: range, step_s: float, clock: list[float],
           epoch_end: Optional[int] = None) -> list[int]:
    """The steps at which ``stop`` compared notes, training ``steps`` of ``step_s`` seconds each."""
    seen = []
    for step in steps:
        clock[0] += step_s
        before = len(stop.accelerator.collectives)  # type: ignore[attr-defined]
        stop.agreed(step)
        if len(stop.accelerator.collectives) > before:  # type: ignore[attr-defined]
            seen.append(step)
        if step == epoch_end:
            clock[0] += 100.0  # an evaluation: not a training step
            stop.agreed(None)
    return seen


def test_the_ranks_check_every_8_steps_then_as_often_as_the_slowest_rank_allows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: clock[0])
    ranks = TwoRanks(other_rank_step_s=0.25)  # the other rank is slower: its time decides
    stop = StopRequest(ranks, lambda message: None)  # type: ignore[arg-type]
    assert checks(stop, range(1, 17), 0.1, clock) == [8, 16]
    # Timed between the checks at steps 8 and 16, agreed in one gather: 5 s / 0.25 s = every 20 steps.
    assert ranks.collectives == ["check", "check", "gather"] and stop.check_every == 20
    assert checks(stop, range(17, 81), 0.1, clock) == [20, 40, 60, 80]
    assert ranks.collectives.count("gather") == 1  # never again

    # A signal waits for the next check at most: 20 steps, 5 s of the slowest rank's steps.
    with stop:
        signal.raise_signal(signal.SIGUSR1)
        assert not any(stop.agreed(step) for step in range(81, 100))
        assert stop.agreed(100)


def test_an_evaluation_between_the_two_timed_checks_is_not_taken_for_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: clock[0])
    ranks = TwoRanks(other_rank_step_s=0.0)
    stop = StopRequest(ranks, lambda message: None)  # type: ignore[arg-type]
    # Epoch ends at step 12 (a check between epochs): the steps 8..16 are not timed; 16..24 are.
    assert checks(stop, range(1, 25), 0.5, clock, epoch_end=12) == [8, 16, 24]
    assert ranks.collectives == ["check", "check", "check", "check", "gather"] and stop.check_every == 10


def test_one_process_looks_at_its_own_flag_every_step() -> None:
    class One(TwoRanks):
        num_processes = 1

    ranks = One(0.0)
    with StopRequest(ranks, lambda message: None) as stop:  # type: ignore[arg-type]
        assert not stop.agreed(1)
        signal.raise_signal(signal.SIGUSR1)
        assert stop.agreed(2) and ranks.collectives == []


def test_a_stop_signal_after_the_run_has_finished_leaves_its_exit_code_0(tmp_path: Path) -> None:
    """SLURM may preempt a job in the moment its trainer has finished: the run is whole, so the signal must not
    turn exit 0 into death by that signal (138 for SIGUSR1, seen in CI) while the process exits."""
    from cifarlab import train

    stopping = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
    before = [signal.getsignal(signum) for signum in stopping]  # SIGINT is ignored already in a shell's background job
    with signal_handlers_kept():
        code = train.main(["--config", str(CONFIGS / "smoke.yaml"), f"train.output_dir={tmp_path}"],
                          train=lambda config, preset=None: None)
        assert code == 0
        assert [signal.getsignal(signum) for signum in stopping] == [signal.SIG_IGN] * 3
        for signum in stopping:  # ignored: this process goes on
            os.kill(os.getpid(), signum)
    assert [signal.getsignal(signum) for signum in stopping] == before  # put back for pytest


def test_ctrl_c_during_the_imports_is_recorded_then_raised_once_they_are_done() -> None:
    with signal_handlers_kept():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal (pytest may run in the background)
        early = preemption.EarlyCtrlC.install()
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # a sweep's trainer gets each Ctrl-C twice
        assert early.pressed
        with pytest.raises(KeyboardInterrupt):
            early.release()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C interrupts waits again
        preemption.EarlyCtrlC.install().release()  # nothing pressed: nothing raised
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a shell's background job: ignored, and it stays so
        ignored = preemption.EarlyCtrlC.install()
        signal.raise_signal(signal.SIGINT)
        ignored.release()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_refusal_puts_back_the_callers_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    from cifarlab import train

    with signal_handlers_kept():
        before = signal.getsignal(signal.SIGINT)
        assert train.main(["optim.lrr=1"]) == 2 and train.main(["--print-config"]) == 0
        assert signal.getsignal(signal.SIGINT) is before


CTRL_C_IN_THE_IMPORTS = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal, also where pytest runs in the background
class CtrlC:  # Ctrl-C, twice as a sweep's trainer gets it, inside torch's and accelerate's imports
    def find_spec(self, name, path=None, target=None):
        if name == "numpy.dtypes":  # accelerate's import looks it up: a lazy import of numpy's, cut short
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
from cifarlab.train import cli
cli()
"""


def test_ctrl_c_inside_the_trainers_imports_is_exit_130_and_one_line(tmp_path: Path) -> None:
    """Python's KeyboardInterrupt there cut numpy's import short: the next look-up recursed (a 40-line RecursionError
    in a sweep's trial log) or failed ('cannot load module more than once'), exit 1. A real process: signals and a
    first import of torch and accelerate."""
    result = subprocess.run([sys.executable, "-c", CTRL_C_IN_THE_IMPORTS, *smoke(tmp_path, "r")], cwd=tmp_path,
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr, result.stdout) == (130, "cifarlab: error: aborted by Ctrl-C\n", "")
    assert not (tmp_path / "runs").exists()
