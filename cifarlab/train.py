"""Train an image classifier with Accelerate: one loop for CPU, one or many GPUs, and mixed precision.

    accelerate launch -m cifarlab.train                                      # default preset, CIFAR-10
    accelerate launch -m cifarlab.train --config configs/smoke.yaml          # fake data, seconds on a CPU
    accelerate launch -m cifarlab.train --config configs/tutorial.yaml data.name=imagefolder data.root=/data/c10
    accelerate launch --multi_gpu --num_processes 2 -m cifarlab.train --config configs/smoke.yaml
    accelerate launch -m cifarlab.train --config runs/exp1/config.yaml train.resume=auto   # continue a run
    python -m cifarlab.train --config configs/resnet18.yaml --print-config    # resolved config, then exit

Configuration: schema defaults <- --config FILE.yaml <- key=value overrides (see cifarlab/config.py).
User errors print one line and exit with code 2; a run that cannot go on (a checkpoint that cannot be
written, a loss that is not finite) exits with code 1; a run stopped by SIGUSR1/SIGTERM (or the death of its
launcher) saves a checkpoint and exits with code 75, by Ctrl-C with 130 (a second Ctrl-C aborts at once).
The loop itself is cifarlab/run/loop.py: this entry point reads and checks the config
before importing torch, so --help, --print-config and config errors answer at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Optional

from cifarlab import files
from cifarlab.config import Config, load_config, to_yaml
from cifarlab.config_errors import refuse_config_flags
from cifarlab.errors import Aborted, CifarlabError, Interrupted, Preempted
from cifarlab.report import console
from cifarlab.run.preemption import EarlyCtrlC, stop_when_orphaned


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cifarlab.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset merged over the defaults, e.g. configs/smoke.yaml")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--quiet", action="store_true", help="print only warnings and errors (logging.level=warning)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.01")
    refuse_config_flags(parser, sys.argv[1:] if argv is None else argv, Config)
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[Sequence[str]] = None, train: Optional[Callable[..., object]] = None) -> int:
    """The command: exit codes as the module docstring says. ``train(config, preset=...)`` trains a loaded config:
    cifarlab.run.loop.train; tests/fake_trainer.py passes a stand-in, which then keeps this command's outside
    contract (arguments, refusals, signals, exit codes) by running this same code."""
    stop_when_orphaned()
    args = parse_args(argv)
    ctrl_c = EarlyCtrlC.install()  # recorded, not raised, during the imports (its docstring)
    try:
        config = load_config(args.config, [*args.overrides, *(["logging.level=warning"] if args.quiet else [])])
        if args.print_config:
            sys.stdout.write(to_yaml(config))
            return 0
        if train is None:
            from cifarlab.run import loop  # torch and accelerate: only once the config is known to be good

            train = loop.train
        ctrl_c.release()  # pressed during the imports: stop here, before anything is written
        train(config, preset=args.config)
    except Preempted as stopped:
        # Saved and stopping (the loop has said where): another stop signal (SLURM cancels the job it requeues,
        # a launcher forwards Ctrl-C) must not turn the exit code into death by that signal during shutdown.
        _ignore_stop_signals()
        return stopped.exit_code
    except CifarlabError as error:
        console.error(str(error))
        return error.exit_code
    except OSError as error:
        if error.errno not in files.OUT_OF_SPACE:
            raise
        # Before the run started, or after it ended (a full disk during a run is a RunFailed naming the command).
        console.error(f"{files.failed_write(error)}; {files.NO_SPACE_AGAIN}")
        return 1
    except KeyboardInterrupt as error:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # An Aborted one (a second Ctrl-C during the run) says how to continue; another came before the run started.
        console.error(str(error) if isinstance(error, Aborted) and str(error) else "aborted by Ctrl-C")
        return Interrupted.exit_code
    finally:
        ctrl_c.restore()  # a refusal or --print-config: an in-process caller's Ctrl-C as it was
    # Finished and saved: a stop signal now (SLURM preempting a job as it ends, seen in CI) has nothing left to
    # save and must not turn exit 0 into death by that signal while the process exits.
    _ignore_stop_signals()
    return 0


def _ignore_stop_signals() -> None:
    """From here to the process's exit, SIGTERM, SIGUSR1 and SIGINT change nothing (the run has saved what it will)."""
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
