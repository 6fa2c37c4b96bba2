"""Sweeps: many training runs from one file, each a normal, resumable run directory.

    python -m cifarlab.sweep configs/sweeps/example.yaml --list      # the trials by index, and each one's state
    python -m cifarlab.sweep configs/sweeps/example.yaml             # run them all, one after another
    python -m cifarlab.sweep configs/sweeps/example.yaml --parallel 2 train.output_dir=/scratch/runs
    python -m cifarlab.sweep configs/sweeps/example.yaml --trial 3   # one trial (a SLURM array task)
    python -m cifarlab.sweep configs/sweeps/example.yaml --dry-run --config_file launch/cpu_2proc.yaml
    python -m cifarlab.sweep configs/sweeps/example.yaml --until-decided --max-seeds 10 --margin 0.5
    sbatch --array=0-$(( $(python -m cifarlab.sweep SWEEP.yaml --count) - 1 )) slurm/sweep.sbatch SWEEP.yaml
    python -m cifarlab.sweep configs/sweeps/search.yaml --parallel 2   # a search: this process is one worker
    python -m cifarlab.sweep configs/sweeps/search.yaml --best         # the best confirmed settings
    python -m cifarlab.sweep configs/sweeps/search.yaml --list --png study.png   # and Optuna's pictures of it

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
configuration is refused. The file may grow and shrink between runs: new trials get the indices after the
recorded ones, no trial is renamed, removed ones are listed as "not in the file". Extra key=value arguments
apply to every trial; other options after SWEEP.yaml (--num_processes 2, --mixed_precision=bf16, ...) go to
`accelerate launch`: only those for processes, machines and precision (docs/sweeps.md, "Launcher options").
Every trial, with its command, and each version of the file are recorded in <name>/sweep.yaml; each trial's
output is appended to <name>/logs/. A trial has finished when its run has (its final weights are written).
Exit codes, from the trials' results: 0 every trial finished, 1 some did not (failed or refused), 2 bad input
(nothing written), 75 a trial was stopped by SIGUSR1/SIGTERM (run again to continue), 130 the same by Ctrl-C.
--until-decided adds a seed per round until each group is better, worse or equivalent (within --margin points)
compared with the first, or has --max-seeds seeds (cifarlab.experiments.sequential); it exits 0 whatever it decided.
A file with search: instead of trials/grid/seeds samples its trials with Optuna (the [search] extra), prunes them at
their evaluations, any number of workers on one study, and confirms the best on fresh seeds
(cifarlab.experiments.searching; docs/sweeps.md, "Searching").
This module imports no torch: it checks every trial's config, then starts trainers.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from cifarlab.config import Config
from cifarlab.config_errors import refuse_config_flags
from cifarlab.errors import UsageError
from cifarlab.experiments import launching, searching, sequential
from cifarlab.experiments.runner import Runner, status, write_record
from cifarlab.experiments.sequential import Plan
from cifarlab.experiments.spec import TRAINER, read_sweep
from cifarlab.files import typed
from cifarlab.report import console, figures

# --- the command line -----------------------------------------------------------------------------------------

USAGE = ("python -m cifarlab.sweep [-h] [--list [--png FILE] | --count | --dry-run | --best | --until-decided "
         "[--max-seeds N] [--margin M]] [--trial I] [--parallel N] SWEEP.yaml [key=value ...] [accelerate launch "
         "options]")
VALUED = ("--trial", "--parallel", "--max-seeds", "--margin", "--png", "--trainer")
"""Our options that take a value."""
LAUNCH_OPTIONS = tuple(spelt for name in (*launching.VALUED, *launching.FLAGS)
                       for spelt in (name, name.replace("_", "-")))
"""accelerate launch's options, either spelling: any other --flag that names a config key (--epochs) asks for an
override."""


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options and key=value overrides, and the rest: options for ``accelerate launch``, which must come
    after SWEEP.yaml (``--num_processes 2``: a word without = after an option is that option's value)."""
    parser = argparse.ArgumentParser(prog="cifarlab.sweep", usage=USAGE, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="print the trials: index, state, name, overrides")
    parser.add_argument("--png", type=Path, metavar="FILE",
                        help="a search, with --list: also draw Optuna's pictures of the study (each trial's value and "
                             "the best so far, each setting against the metric, each key's importance) into "
                             "FILE-history, FILE-slice and FILE-importances; FILE's ending picks the format: "
                             f"{figures.endings()}")
    mode.add_argument("--count", action="store_true",
                      help="print the highest trial index + 1 (the number of trials, for sbatch --array)")
    mode.add_argument("--dry-run", action="store_true", help="print each trial's command instead of running it")
    mode.add_argument("--best", action="store_true",
                      help="a search: print the best confirmed settings as trainer options (--config ... key=value)")
    mode.add_argument("--until-decided", action="store_true",
                      help="add a seed per round until each group is decided against the first (docs/sweeps.md)")
    parser.add_argument("--max-seeds", type=int, metavar="N",
                        help=f"with --until-decided: at most N seeds per group (default {sequential.MAX_SEEDS})")
    parser.add_argument("--margin", type=float, metavar="M",
                        help="with --until-decided: differences within ±M accuracy points are equivalent "
                             "(default: no equivalence is decided)")
    parser.add_argument("--trial", type=int, metavar="I", help="only trial I (0-based; a SLURM array task id)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="run N trials at a time (default 1)")
    # The trials' program: a module or a .py script with cifarlab.train's outside contract. For tests (a fast
    # stand-in trainer, tests/fake_trainer.py; tests/README.md), so not shown in --help. A command-line option
    # only: nothing a sweep file says can name it.
    parser.add_argument("--trainer", type=program, default=TRAINER, help=argparse.SUPPRESS)
    parser.add_argument("sweep", metavar="SWEEP.yaml", help="the sweep file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every trial")
    refuse_config_flags(parser, argv, Config, LAUNCH_OPTIONS)
    ours: list[str] = []
    launch: list[str] = []
    positional: list[str] = []
    words = list(argv)
    while words:
        word = words.pop(0)
        if word in ("-h", "--help", "--list", "--count", "--dry-run", "--best", "--until-decided") or word.startswith(
                tuple(f"{option}=" for option in VALUED)):
            ours.append(word)
        elif word in VALUED:
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


def program(trainer: str) -> tuple[str, ...]:
    """python's arguments that start ``trainer``: a script ending in .py, else a module (``-m``)."""
    return (trainer,) if trainer.endswith(".py") else ("-m", trainer)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, launch = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.parallel < 1:
            raise UsageError(f"--parallel {args.parallel}: run at least 1 trial at a time")
        if args.png is not None:
            check_pictures(args)
        if args.until_decided or args.max_seeds is not None or args.margin is not None:
            return until_decided(args, launch)
        sweep = read_sweep(args.sweep, args.overrides, launch, trainer=args.trainer)
        if args.png is not None and sweep.search is None:
            raise UsageError(f"--png: {args.sweep} has no search: section; compare draws a sweep's runs: "
                             + shlex.join(["python", "-m", "cifarlab.compare", typed(sweep.folder), "--png",
                                           typed(args.png)]))
        if sweep.search is not None and args.list:
            if args.png is not None:
                for written in searching.search_pictures(sweep, args.png):
                    console.note(f"picture written to {typed(written)}")
            searching.show_listing(sweep)
            return 0
        if sweep.search is not None and args.best:
            print(searching.best(sweep))
            return 0
        if sweep.search is not None:
            return searching.main(sweep, args)
        if args.best:
            raise UsageError(f"--best: {args.sweep} has no search: section; compare shows a grid's results")
        listed = sorted((*sweep.trials, *sweep.removed), key=lambda t: t.index)
        if args.trial is not None:
            listed = [trial for trial in listed if trial.index == args.trial]
            if not listed:
                raise UsageError(f"--trial {args.trial}: {args.sweep} has {sweep.count} trials (0-{sweep.count - 1})")
        trials = [trial for trial in listed if trial not in sweep.removed]
        if args.count:
            print(sweep.count)
            return 0
        if args.list:
            console.print_columns(["index", "state", "name", "overrides"],
                                  [[str(trial.index), status(sweep, trial), trial.name, " ".join(trial.settings)]
                                   for trial in listed])
            return 0
        if not trials:  # --trial of a trial the file no longer lists (an array over the old and the new trials)
            print(f"sweep {sweep.name}: trial {args.trial} {listed[0].name} is no longer in {args.sweep}; "
                  f"nothing to run", flush=True)
            return 0
        if args.dry_run:
            for trial in trials:
                print(f"{trial.index}\t{shlex.join(sweep.command(trial))}")
            return 0
        write_record(sweep)
    except UsageError as error:
        console.error(str(error))
        return error.exit_code
    print(f"sweep {sweep.name}: {len(trials)} of {len(sweep.trials)} trial(s) in {typed(sweep.folder)}, "
          f"{min(args.parallel, len(trials))} at a time", flush=True)
    return Runner(sweep, min(args.parallel, len(trials))).run(trials)


def check_pictures(args: argparse.Namespace) -> None:
    """Before any work: --png goes with --list, to files it can write (cifarlab.report.figures)."""
    if not args.list:
        raise UsageError("--png goes with --list (python -m cifarlab.sweep SEARCH.yaml --list --png FILE): it draws "
                         "a search's study")
    figures.check("--png", args.png)
    for path in searching.picture_files(args.png):
        figures.check("--png", path)


def until_decided(args: argparse.Namespace, launch: list[str]) -> int:
    if not args.until_decided:
        raise UsageError(f"--{'max-seeds' if args.max_seeds is not None else 'margin'} goes with --until-decided")
    if args.trial is not None:
        raise UsageError("--until-decided runs every round itself: not with --trial (docs/sweeps.md: on SLURM, run it "
                         "inside one allocation with --parallel N)")
    plan = Plan(sequential.MAX_SEEDS if args.max_seeds is None else args.max_seeds, args.margin, args.parallel)
    return sequential.until_decided(args.sweep, args.overrides, launch, plan, args.trainer)


def cli() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... --list | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    cli()
