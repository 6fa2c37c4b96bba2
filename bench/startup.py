"""Start-up cost: how long cifarlab takes before it does anything useful, and what it imports on the way.

    cd CHECKOUT && PYTHONPATH=$PWD python bench/startup.py --data-root /tmp/cifar10-jpeg --rounds 5
    cd /tmp/before && PYTHONPATH=$PWD python /work/main/bench/startup.py --console-timing --name startup_before

Measures the cifarlab that `import cifarlab` finds (run it from the checkout under test, with PYTHONPATH set to
it to beat the editable install). Medians over --rounds fresh processes, variants alternating round by round:

1. CLI: wall seconds of `python -m cifarlab.train --help`, `--print-config` and a config error (`optim.lrr=1`,
   exit 2); target <= 1.5 s each. An extra `-X importtime` run of each says whether torch was imported.
2. `python -X importtime -c "import cifarlab.train"`: cifarlab's total and the cumulative (overlapping) seconds
   of torch, torchvision, torch._dynamo, accelerate, wandb and of the costliest top-level packages.
3. From just before a one-process `accelerate launch` (common.launch) of the default preset (imagefolder data
   at --data-root, 1 epoch of 2048 training / 500 test images, a log record every step) to its first training
   step, with W&B as the preset has it (offline without credentials) and with logging.wandb.mode=disabled,
   beside the same launch of a script that only imports torch and accelerate (to its exit). Target: trainer
   minus baseline <= 1.5 s. First step: the "time" of the first metrics.jsonl record with "step" == 1; with
   --console-timing (how the pre-refactor figures were taken: that trainer writes no step records) the arrival
   of the first stdout line "epoch 1 step 1/". A wrapper records whether the training process imported
   torchvision, wandb, torch._dynamo. A first, separate run builds the decoded-image cache when it is missing
   (--redecode: always), so that one-off decode is reported apart.

Results: bench/results/<--name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import launch, machine, save

CLI = {"help": (["--help"], 0), "print-config": (["--print-config"], 0), "config-error": (["optim.lrr=1"], 2)}
NAMED = ["torch", "torchvision", "torch._dynamo", "accelerate", "wandb"]
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$")
WRAPPER = """import atexit, json, os, sys
def _report():
    with open(os.environ["STARTUP_MODULES"], "w") as f:
        json.dump({m: m in sys.modules for m in ("torchvision", "wandb", "torch._dynamo")}
                  | {"cifarlab": sys.modules["cifarlab"].__file__}, f)
atexit.register(_report)
from cifarlab.train import main
sys.exit(main(sys.argv[1:]))
"""
BASELINE = "import torch, accelerate\n"


def env(extra_path: str = "") -> dict[str, str]:
    child = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    child.pop("WANDB_API_KEY", None)
    if extra_path:
        child["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, os.environ.get("PYTHONPATH", "")) if p)
    return child


def import_times(stderr: str) -> list[tuple[str, int, float]]:
    """(module, nesting level, cumulative seconds) of each line of `python -X importtime` output."""
    return [(m[4], len(m[3]) // 2, int(m[2]) / 1e6) for m in map(IMPORT_LINE.match, stderr.splitlines()) if m]


def cli_run(args: list[str], code: int, importtime: bool = False) -> tuple[float, bool]:
    """Wall seconds of `python -m cifarlab.train ARGS` (checking its exit code); whether torch was imported
    (known only with ``importtime``)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "cifarlab.train",
                           *args], check=False, capture_output=True, text=True, env=env())
    seconds = time.perf_counter() - start
    if done.returncode != code:
        sys.exit(f"cifarlab.train {' '.join(args)}: exit {done.returncode}, expected {code}\n{done.stderr}")
    return seconds, any(name == "torch" for name, _, _ in import_times(done.stderr))


def import_round(module: str) -> tuple[dict[str, float], dict[str, str]]:
    """Cumulative seconds of "total" (cifarlab's top-level entries), the NAMED modules and the top-level packages
    over 10 ms (at their first import, which carries the cost); and the module that imported each."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                          text=True, env=env(), check=True)
    lines = import_times(done.stderr)
    lines = lines[next((i + 1 for i, (n, lv, _) in enumerate(lines) if (n, lv) == ("site", 0)), 0):]  # not start-up
    found: dict[str, float] = {"total": sum(s for n, lv, s in lines if lv == 0 and n.split(".")[0] == "cifarlab")}
    parents: dict[str, str] = {}
    for i, (name, level, seconds) in enumerate(lines):
        if name in NAMED or ("." not in name and seconds >= 0.01 and name != "cifarlab"):
            if name not in found:  # -X importtime prints a module after what it imports: the importer comes later
                parents[name] = next((n for n, lv, _ in lines[i + 1:] if lv < level and not n.startswith(name + ".")),
                                     "(top level)")
            found.setdefault(name, seconds)
    return found, parents


def launch_round(command: list[str], tmp: Path, run_dir: Optional[Path], console: bool) -> dict[str, Any]:
    """Seconds from before the launcher to the first step (or, for the baseline, to its exit); exit seconds."""
    modules = tmp / "modules.json"
    modules.unlink(missing_ok=True)
    child = {**env(str(tmp)), "STARTUP_MODULES": str(modules)}
    start, first = time.time(), None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child)
    lines: list[str] = []
    for line in process.stdout or []:
        lines.append(line)
        if first is None and console and "epoch 1 step 1/" in line:
            first = time.time() - start
    wall = time.time() - start
    if process.wait() != 0:
        sys.exit(f"{' '.join(command)} failed with exit {process.returncode}:\n{''.join(lines[-20:])}")
    result: dict[str, Any] = {"exit_s": wall}
    if run_dir is not None:
        if not console:
            from cifarlab.analysis.results import records as read_records

            records = read_records(run_dir)
            first = next((r["time"] - start for r in records if r.get("step") == 1), None)
        if first is None:
            sys.exit(f"no first step found in the output of {' '.join(command)}")
        result |= {"first_step_s": first, "imported": json.loads(modules.read_text())}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="/tmp/cifar10-jpeg", help="image-folder CIFAR-10 (train/, test/)")
    parser.add_argument("--import-module", default="cifarlab.train",
                        help="the module whose import is timed in 2. (cifarlab.run.loop: the training loop's imports)")
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per figure (default 5)")
    parser.add_argument("--name", default="startup", help="results name: bench/results/NAME.{json,md}")
    parser.add_argument("--console-timing", action="store_true", help="first step = arrival of the first "
                        "'epoch 1 step 1/' stdout line (pre-refactor trainer) instead of metrics.jsonl")
    parser.add_argument("--redecode", action="store_true", help="delete the decoded-image cache first, so the "
                        "first (untimed-round) run measures the one-off decode")
    args = parser.parse_args()
    load = [os.getloadavg()[0]]  # other work on the machine inflates every figure: recorded at start and end
    where = subprocess.run([sys.executable, "-c", "import cifarlab; print(cifarlab.__file__)"], capture_output=True,
                           text=True, env=env(), check=True).stdout.strip()

    # 1. CLI
    cli_torch = {name: cli_run(*command, importtime=True)[1] for name, command in CLI.items()}  # also a warm-up
    cli: dict[str, list[float]] = {name: [] for name in CLI}
    for _ in range(args.rounds):
        for name, command in CLI.items():
            cli[name].append(cli_run(*command)[0])
    print(f"cifarlab from {where}; CLI:", {k: round(median(v), 2) for k, v in cli.items()}, "torch:", cli_torch)

    # 2. import time
    imports, parents = zip(*(import_round(args.import_module) for _ in range(args.rounds)))
    import_median = {k: median([i.get(k, 0.0) for i in imports]) for k in set().union(*imports)}
    top = sorted((k for k in import_median if k != "total"), key=lambda k: -import_median[k])[:5]
    print(f"import {args.import_module}: {import_median['total']:.2f}s; top: {top}", flush=True)

    # 3. launch to first step
    cache = Path(args.data_root) / ".cifarlab-cache"
    if args.redecode:
        shutil.rmtree(cache, ignore_errors=True)
    cached_before = cache.is_dir() and any(cache.iterdir())
    variants = {"baseline": None, "wandb-offline": [], "wandb-disabled": ["logging.wandb.mode=disabled"]}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "startup_wrapper.py").write_text(WRAPPER)
        (tmp / "startup_baseline.py").write_text(BASELINE)
        trainer = ["data.name=imagefolder", f"data.root={args.data_root}", "train.epochs=1", "data.train_size=2048",
                   "data.test_size=500", "logging.every_n_steps=1", f"train.output_dir={tmp / 'runs'}"]
        commands = {v: launch([], module="startup_baseline") if extra is None else
                    launch([*trainer, *extra, "train.run_name=RUN"], module="startup_wrapper")
                    for v, extra in variants.items()}

        def run(variant: str, tag: str) -> dict[str, Any]:
            command = [f"train.run_name={tag}" if a == "train.run_name=RUN" else a for a in commands[variant]]
            return launch_round(command, tmp, None if variant == "baseline" else tmp / "runs" / tag,
                                args.console_timing)

        first_run = run("wandb-disabled", "first")
        print(f"first run (cache {'present' if cached_before else 'built'}): first step at "
              f"{first_run['first_step_s']:.1f}s", flush=True)
        launches: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for round_ in range(args.rounds):
            for variant in variants:
                launches[variant].append(run(variant, f"{variant}-{round_}"))
            print(f"round {round_ + 1}:", {v: round(r[-1].get("first_step_s", r[-1]["exit_s"]), 2)
                                           for v, r in launches.items()}, flush=True)
    seconds = {v: [r.get("first_step_s", r["exit_s"]) for r in rs] for v, rs in launches.items()}
    medians = {v: median(s) for v, s in seconds.items()}
    load.append(os.getloadavg()[0])
    summary = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_1min": load, "cifarlab": where,
        "rounds": args.rounds, "first_step": "stdout 'epoch 1 step 1/'" if args.console_timing else "metrics.jsonl",
        "cli": {k: {"command": f"python -m cifarlab.train {' '.join(CLI[k][0])}", "exit": CLI[k][1],
                    "rounds_s": v, "median_s": median(v), "torch_imported": cli_torch[k]} for k, v in cli.items()},
        "import": {"command": f'python -X importtime -c "import {args.import_module}"', "rounds_s": imports,
                   "median_s": import_median, "top5": top, "imported_by": parents[-1]},
        "launch": {"commands": commands, "rounds_s": seconds, "rounds": launches, "median_s": medians,
                   "minus_baseline_s": {v: medians[v] - medians["baseline"] for v in variants if v != "baseline"},
                   "paired_minus_baseline_s": {v: median([x - b for x, b in zip(seconds[v], seconds["baseline"])])
                                               for v in variants if v != "baseline"},
                   "imported": {v: rs[0]["imported"] for v, rs in launches.items() if v != "baseline"}},
        "first_run": {"cache_present_before": cached_before, **first_run,
                      "over_cached_median_s": first_run["first_step_s"] - medians["wandb-disabled"]}}
    save(args.name, summary, markdown(summary, args))


def markdown(s: dict[str, Any], args: argparse.Namespace) -> str:
    imports, launches, first = s["import"], s["launch"], s["first_run"]
    cli = [f"| `{c['command']}` (exit {c['exit']}) | {' '.join(f'{x:.2f}' for x in c['rounds_s'])} | "
           f"**{c['median_s']:.2f}** | {'yes' if c['torch_imported'] else 'no'} |" for c in s["cli"].values()]
    modules = [f"| {k} | {imports['median_s'][k]:.2f} | {imports['imported_by'].get(k, '')} |"
               if k in imports["median_s"] else f"| {k} | not imported | |"
               for k in dict.fromkeys(["total", *NAMED, *imports["top5"]])]
    runs = []
    for v, values in launches["rounds_s"].items():
        cells = [v, " ".join(f"{x:.2f}" for x in values), f"**{launches['median_s'][v]:.2f}**", "", ""]
        if v != "baseline":
            cells[3] = f"{launches['minus_baseline_s'][v]:+.2f} ({launches['paired_minus_baseline_s'][v]:+.2f})"
            cells[4] = ", ".join(m for m, yes in launches["imported"][v].items() if yes is True)
        runs.append(f"| {' | '.join(cells)} |")
    flags = (f"--rounds {args.rounds}{' --console-timing' if args.console_timing else ''} --name {args.name} "
             f"--import-module {args.import_module}")
    return "\n".join([
        "# Start-up", "",
        (f"Machine: {s['machine']}; {s['date']}; 1-min load average {s['load_average_1min'][0]:.1f} at the start, "
         f"{s['load_average_1min'][1]:.1f} at the end. cifarlab from `{s['cifarlab']}`. `python bench/startup.py "
         f"{flags}`: medians of {args.rounds} alternating rounds, seconds."), "",
        "## CLI (target <= 1.5 s each)", "", "| command | rounds | median | torch imported |", "|---|---|---|---|",
        *cli, "", f"## `{imports['command']}` (cumulative seconds, overlapping)", "",
        f"Top 5: {', '.join(imports['top5'])}.", "", "| module | median | imported by |", "|---|---|---|", *modules,
        "", "## `accelerate launch` to the first training step (target: trainer - baseline <= 1.5 s)", "",
        (f"First step: {s['first_step']}; baseline: to its exit. wandb-offline is the preset (W&B mode auto, no "
         "credentials). - baseline: difference of medians (median of the per-round differences)."), "",
        "| variant | rounds | median | - baseline | imported (torchvision, wandb, torch._dynamo) |",
        "|---|---|---|---|---|", *runs, "",
        (f"First run (W&B disabled; decoded-image cache {'present' if first['cache_present_before'] else 'built'}): "
         f"first step at {first['first_step_s']:.1f}s ({first['over_cached_median_s']:+.1f}s on the cached median), "
         f"exit at {first['exit_s']:.1f}s."), "", "Commands (RUN: a fresh run name each round):", "",
        *(f"- {v}: `{' '.join(c)}`" for v, c in launches["commands"].items()), ""])


if __name__ == "__main__":
    main()
