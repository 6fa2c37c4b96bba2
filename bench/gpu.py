"""Single-GPU benchmark (H100/H200), prepared to run later in one job; it needs a CUDA device.

    python bench/gpu.py --data-root /data/cifar10-jpeg                         # a) and b)
    python bench/gpu.py --data-root /data/cifar10-jpeg --airbench-cmd 'python my_airbench94_on_jpeg.py'
    python bench/gpu.py --data-root /data/cifar10-jpeg --dry-run               # print the commands, run nothing
    python bench/gpu.py --smoke --allow-cpu --seeds 2                          # check the parsing on a CPU

Each run is a fresh `accelerate launch` process timed from its start (unix time); every figure comes from its
metrics.jsonl evaluation records (test/acc, train/epoch_seconds, train/epoch_images_per_s, and `time`, when the
record was written), none from console text; the console is kept as <run>.log, and read only for a failure's cause.
a) The fast preset (--fast-config, bf16), seeds 0..K-1: final accuracy mean/std, train seconds (the sum of
   train/epoch_seconds), wall seconds from process start to the final evaluation record's `time` (the first run may
   also fill data.loader=tensor's cache). Then seed 0 with train.compile=true: compile cost = first epoch's train
   seconds minus the median of later epochs.
b) The resnet18 preset, one epoch in fp32 and in bf16 (`accelerate launch --mixed_precision no` / `bf16` with
   train.mixed_precision=null): train images/s (warm-up included).
c) Optional airbench94 (github.com/KellerJordan/cifar10-airbench; obtained separately, never committed): `--airbench
   PATH` runs `python PATH` in PATH's folder, on the official CIFAR-10 it downloads. For the same JPEG copy, pass a
   shell command instead, `--airbench-cmd '...'` (run from this repository; e.g. your local copy with a loader for
   the JPEG folder). Its output is kept raw in gpu.json with its wall time; nothing in it is parsed.
Results: bench/results/gpu.{json,md} (device, driver/CUDA/torch versions, date, every command); their step_times
feed bench/multi_gpu_estimate.py. --smoke (fake data, 512/256 images, 1 epoch of batch 128) writes
/tmp/cifarlab-gpu-smoke/ instead, so a CPU check never replaces real results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import accelerate
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cpu_model, evaluations

# A failed run's cause in its console output (only then): the trainer's error, not the launcher's traceback.
ERROR = re.compile(r"cifarlab: error:|(?!subprocess\.)[\w.]*(Error|Exception): ")
SMOKE = ["data.name=fake", "data.train_size=512", "data.test_size=256", "train.epochs=1",
         "train.batch_size=128", "optim.warmup_epochs=0"]  # every preset: one short epoch, >= 3 steps (onecycle)


def launch(mixed_precision: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", mixed_precision, "--dynamo_backend", "no", "-m", "cifarlab.train"]


def plan(args: argparse.Namespace, runs: Path) -> list[tuple[str, list[str]]]:
    """(name, command) for every trainer run, in order."""
    data = SMOKE if args.smoke else ["data.name=imagefolder", f"data.root={args.data_root}"]

    def common(name: str) -> list[str]:
        return [*data, "logging.wandb.mode=disabled", f"train.output_dir={runs}", f"train.run_name={name}"]

    fast = [(f"fast-seed{s}", [*launch("bf16"), "--config", args.fast_config, *common(f"fast-seed{s}"),
                               f"train.seed={s}"]) for s in range(args.seeds)]
    fast.append(("fast-compile", [*launch("bf16"), "--config", args.fast_config, *common("fast-compile"),
                                  "train.seed=0", "train.compile=true"]))
    # null: the launcher's --mixed_precision decides (a bare `train.mixed_precision=no` would read as YAML false).
    return fast + [(f"resnet18-{mp}", [*launch(mp), "--config", args.resnet_config, *common(f"resnet18-{mp}"),
                                       "train.epochs=1", "train.mixed_precision=null"]) for mp in ("no", "bf16")]


def run(name: str, command: list[str] | str, runs: Path, cwd: Path = REPO) -> dict[str, Any]:
    """One fresh process: its exit code, wall time and metrics.jsonl evaluation records (console kept as a log)."""
    start, clock = time.time(), time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, shell=isinstance(command, str), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    rc, wall, lines = proc.returncode, time.perf_counter() - clock, proc.stdout.splitlines()
    records = [r for r in evaluations(runs / name) if r["time"] >= start]  # this launch's evaluations
    config_file = runs / name / "config.yaml"  # the resolved config
    config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
    (runs / f"{name}.log").write_text("\n".join(lines) + "\n")
    metrics = [{"epoch": int(r["train/epoch"]), "test/acc": r["test/acc"], "train/epoch_loss": r["train/epoch_loss"],
                "train/epoch_images_per_s": r["train/epoch_images_per_s"],
                "train/epoch_seconds": r["train/epoch_seconds"], "wall_s": r["time"] - start} for r in records]
    result = {"name": name, "command": command if isinstance(command, str) else shlex.join(command), "rc": rc,
              "wall_s": wall, "final_accuracy_wall_s": metrics[-1]["wall_s"] if metrics else None,
              "metrics": metrics, "model": config.get("model", {}).get("name"),
              "train": {k: config.get("train", {}).get(k) for k in ("batch_size", "mixed_precision", "compile")}}
    if rc != 0 or (not isinstance(command, str) and not metrics):
        # The trainer's own error, not the launcher's CalledProcessError traceback that follows it.
        cause = (f"no evaluation record in {runs / name / 'metrics.jsonl'}" if rc == 0 else
                 next((line for line in lines if ERROR.match(line)), lines[-1] if lines else "no output"))
        result.update(error=cause, output_tail=lines[-30:])
        print(f"{name}: FAILED (exit {rc}): {cause}", flush=True)
    else:
        last = f", accuracy {100 * metrics[-1]['test/acc']:.2f} %" if metrics else ""
        print(f"{name}: {wall:.1f}s wall{last}", flush=True)
    return result


def environment(smoke: bool) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                            text=True, check=False).stdout.strip() if cuda and shutil.which("nvidia-smi") else None
    cpu = cpu_model()
    device = torch.cuda.get_device_name(0) if cuda else f"CPU: {cpu}"
    return {"device": device, "device_type": "cuda" if cuda else "cpu", "driver": driver, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "torch": torch.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version(),
            "host": f"{cpu}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M"), "smoke": smoke}


def ok(r: dict[str, Any]) -> bool:
    return r["rc"] == 0 and bool(r["metrics"])


def mean(values: list[float]) -> Optional[float]:
    return statistics.fmean(values) if values else None


def summarize(results: dict[str, dict[str, Any]], env: dict[str, Any]) -> dict[str, Any]:
    seeds = [r for name, r in results.items() if name.startswith("fast-seed") and ok(r)]
    accuracy = [r["metrics"][-1]["test/acc"] for r in seeds]
    walls = [r["final_accuracy_wall_s"] for r in seeds if r["final_accuracy_wall_s"] is not None]
    fast = {"runs": len(seeds), "accuracy_mean": mean(accuracy),
            "accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else None,
            "train_s_mean": mean([sum(m["train/epoch_seconds"] for m in r["metrics"]) for r in seeds]),
            "final_accuracy_wall_s_mean": mean(walls)}
    compiled = results.get("fast-compile")
    if compiled and ok(compiled):
        epoch_s = [m["train/epoch_seconds"] for m in compiled["metrics"]]
        later = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else None
        eager = [m["train/epoch_seconds"] for r in seeds for m in r["metrics"][1:]]
        fast["compile"] = {"first_epoch_s": epoch_s[0], "later_epochs_median_s": later,
                           "compile_cost_s": epoch_s[0] - later if later is not None else None,
                           "eager_later_epochs_median_s": statistics.median(eager) if eager else None}
    step_times = {}  # what bench/multi_gpu_estimate.py reads: steady-state train images/s at the run's batch
    if seeds:
        speeds = [m["train/epoch_images_per_s"] for r in seeds for m in (r["metrics"][1:] or r["metrics"])]
        train = seeds[0]["train"]
        step_times[seeds[0]["model"]] = {"batch": train["batch_size"], "images_per_s": statistics.median(speeds),
                                         "mixed_precision": train["mixed_precision"] or "bf16 (launcher)",
                                         "source": f"fast preset (compile={train['compile']}), epochs 2+ if any"}
    if (r := results.get("resnet18-bf16")) and ok(r):
        step_times["resnet18"] = {"batch": r["train"]["batch_size"],
                                  "images_per_s": r["metrics"][-1]["train/epoch_images_per_s"],
                                  "mixed_precision": "bf16", "source": "resnet18 preset, one epoch (warm-up included)"}
    return {**env, "fast": fast, "step_times": step_times, "runs": results}


def markdown(s: dict[str, Any]) -> str:
    def num(x: Optional[float], fmt: str = ".1f") -> str:
        return "-" if x is None else format(x, fmt)

    fast, runs = s["fast"], s["runs"]
    out = [f"# Single-GPU benchmark{' (SMOKE: fake data, not a benchmark)' if s['smoke'] else ''}", "",
           (f"Device: **{s['device']}**; driver {s['driver']}, CUDA {s['cuda']}, cuDNN {s['cudnn']}, "
            f"torch {s['torch']}, accelerate {s['accelerate']}, Python {s['python']}; host {s['host']}; {s['date']}."),
           "",
           "## Fast preset", "", "| run | accuracy % | train s | wall s to final accuracy | wall s |",
           "|---|---|---|---|---|"]
    for name, r in runs.items():
        if name.startswith("fast"):
            acc = 100 * r["metrics"][-1]["test/acc"] if ok(r) else None
            train = sum(m["train/epoch_seconds"] for m in r["metrics"]) if ok(r) else None
            out.append(f"| {name} | {num(acc, '.2f')} | {num(train)} | {num(r['final_accuracy_wall_s'])} "
                       f"| {num(r['wall_s'])} |")
    percent = {k: None if fast[k] is None else 100 * fast[k] for k in ("accuracy_mean", "accuracy_std")}
    out += ["", (f"Seeds: {fast['runs']}; accuracy {num(percent['accuracy_mean'], '.2f')} % "
                 f"+- {num(percent['accuracy_std'], '.2f')} (std); mean train {num(fast['train_s_mean'])} s; "
                 f"mean wall to final accuracy {num(fast['final_accuracy_wall_s_mean'])} s.")]
    if c := fast.get("compile"):
        out += ["", (f"train.compile=true: first epoch {num(c['first_epoch_s'])} s, later epochs median "
                     f"{num(c['later_epochs_median_s'])} s (eager: {num(c['eager_later_epochs_median_s'])} s); "
                     f"compile cost about {num(c['compile_cost_s'])} s.")]
    out += ["", "## resnet18 preset, one epoch", "", "| mixed precision | train images/s | wall s |", "|---|---|---|"]
    out += [f"| {name.split('-')[1]} "
            f"| {num(r['metrics'][-1]['train/epoch_images_per_s'] if ok(r) else None, ',.0f')} | {num(r['wall_s'])} |"
            for name, r in runs.items() if name.startswith("resnet18")]
    if a := runs.get("airbench"):
        out += ["", "## airbench94 (raw output in gpu.json)", "", f"Exit {a['rc']}, wall {a['wall_s']:.1f} s.", "",
                "```", *a["output"][-15:], "```"]
    out += ["", "## Commands", ""] + [f"- `{r['command']}`" + (f" FAILED (exit {r['rc']}): {r['error']}" if "error" in r
                                                               else "") for r in runs.values()]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", help="image-folder copy of CIFAR-10 (train/, test/); not with --smoke")
    parser.add_argument("--seeds", type=int, default=5, help="K: fast-preset runs with seeds 0..K-1")
    parser.add_argument("--fast-config", default="configs/fast.yaml")
    parser.add_argument("--resnet-config", default="configs/resnet18.yaml")
    parser.add_argument("--airbench", metavar="PATH", help="airbench94.py to run as `python PATH` in its folder")
    parser.add_argument("--airbench-cmd", metavar="CMD", help="free-form shell command instead (e.g. on the JPEG copy)")
    parser.add_argument("--runs-dir", help="keep run folders and console logs here (default: a temporary folder)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    parser.add_argument("--smoke", action="store_true", help="fake data, 1 short epoch (checks parsing)")
    parser.add_argument("--allow-cpu", action="store_true", help="with --smoke: run without a GPU")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available() and not (args.smoke and args.allow_cpu):
        print("no CUDA device: run this on a GPU machine", file=sys.stderr)
        sys.exit(2)
    if not args.smoke and not args.data_root:
        parser.error("--data-root is required (or --smoke)")
    for flag, path in (("--fast-config", args.fast_config), ("--resnet-config", args.resnet_config)):
        if not args.dry_run and not (REPO / path).is_file():
            parser.error(f"{flag} {path}: no such file in {REPO}")
    airbench = args.airbench_cmd or (shlex.join([sys.executable, args.airbench]) if args.airbench else None)
    airbench_cwd = Path(args.airbench).resolve().parent if args.airbench and not args.airbench_cmd else REPO
    with tempfile.TemporaryDirectory(prefix="cifarlab-gpu-") as tmp:
        runs = Path(args.runs_dir or tmp).resolve()
        commands = plan(args, runs)
        if args.dry_run:
            lines = [shlex.join(c) for _, c in commands] + [f"(cd {airbench_cwd} && {airbench})"] * bool(airbench)
            print("\n".join(lines))
            return
        runs.mkdir(parents=True, exist_ok=True)
        env = environment(args.smoke)
        results = {name: run(name, command, runs) for name, command in commands}
        if airbench:
            a = run("airbench", airbench, runs, airbench_cwd)
            results["airbench"] = {**a, "output": (runs / "airbench.log").read_text().splitlines()}
    summary = summarize(results, env)
    out = Path("/tmp/cifarlab-gpu-smoke") if args.smoke else REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(summary))
    failed = [name for name, r in results.items() if r["rc"] != 0]
    print(f"-> {out}/gpu.md" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
