"""Several runs in one 2-process launch: ``accelerate launch --multi_gpu --num_processes 2 tests/two_processes.py
OUT ARGS [--- ARGS ...]`` runs ``cifarlab.train.main(ARGS)`` for each argument list in turn (or, for one whose first
item is a ``.py`` file, that script as ``__main__`` with the rest as its arguments), with Accelerate's state reset
before each, as a fresh launch would start it. What each rank prints during run N goes to OUT/N.<rank>.out and
.err, its exit code to OUT/N.<rank>.exit (tests/conftest.py's ``run_two`` reads them).

A launcher and two interpreters start once instead of once a run (seconds of 2 busy cores each). Each run still
makes its own Accelerator, data, model, run directory, lock and signal handlers: what is tested with it is the
trainer on two ranks, not a process start-up. The gloo process group is the one thing kept from run to run: the
trainer leaves it at its end (Accelerator.end_training), and a second one made in the same processes meets the
first one's keys in the launcher's store (the ranks then wait for each other at stale addresses), so here leaving
it waits for the end of the launch, as Accelerate itself does for processes it forked; the ranks meet at a barrier
after each run.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import sys
from pathlib import Path

import torch.distributed as dist
from accelerate.state import AcceleratorState, GradientState, PartialState

from cifarlab import train

SEPARATOR = "---"


def runs(arguments: list[str]) -> list[list[str]]:
    found: list[list[str]] = [[]]
    for argument in arguments:
        if argument == SEPARATOR:
            found.append([])
        else:
            found[-1].append(argument)
    return found


def run(arguments: list[str]) -> int:
    if arguments and arguments[0].endswith(".py"):
        saved = sys.argv
        sys.argv = arguments
        try:
            runpy.run_path(arguments[0], run_name="__main__")
        except SystemExit as exit:
            return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        finally:
            sys.argv = saved
        return 0
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        return train.main(arguments)
    finally:  # a finished command ignores stop signals until its process exits: the next run here must not
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])  # set by the launcher for each process
    leave = PartialState.destroy_process_group
    PartialState.destroy_process_group = lambda self, group=None: None if group is None else leave(self, group)
    for index, arguments in enumerate(runs(sys.argv[2:])):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        name = out / f"{index}.{rank}"
        with open(f"{name}.out", "w") as stdout, open(f"{name}.err", "w") as stderr, \
                contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run(arguments)
        Path(f"{name}.exit").write_text(str(code))
        if dist.is_initialized():
            dist.barrier()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
