"""The device check: everything a session lent a GPU should measure, in one call of at most 10 minutes.

    bench/device_check.sh                 # on the device machine (installs the carried wheels, unpacks the data)
    bench/device_rehearsal.sh             # here: the same, --cpu --tiny, in an environment with the device's packages

Each trainer run is a fresh process (``python bench/device_check.py --child ...``: the real ``loop.train`` with the
config a user would pass, plus what only the process itself can see: CUDA sync warnings, torch.compile's graphs,
whether wandb was imported). Figures come from each run's metrics.jsonl. Sections, in order of importance; each is
skipped when too little of ``--budget-s`` is left, and a failure in one is recorded and the next one runs:

1. environment: versions, the card, whether wandb is importable and whether the package imported it (it must not
   with W&B off: the device has no wandb);
2. data: airbench's ``train.pt``/``test.pt`` (uint8 N x 32 x 32 x 3, int64 labels, classes) from the same JPEG copy;
3. sync: 30 steps of the fast preset with ``torch.cuda.set_sync_debug_mode("warn")``: CUDA syncs per step and where;
4. fast: the fast preset eager and compiled (epoch seconds, images/s, graphs, compile seconds);
5. resume: the fast preset stopped by SIGUSR1 mid-run and resumed, against an uninterrupted run (bitwise or the
   largest difference);
6. versus: airbench94 (the package's ``train94``) and the fast preset in its speed-record mode
   (``train.eval_every_epoch=false checkpoint.every_epoch=false``) over ``--seeds`` seeds on the same card;
7. precision: resnet18 steps in fp32/bf16/fp16 on both data paths (tensor, torchvision).

``--cpu --tiny`` (the rehearsal) runs every section on a small copy of the data on the CPU: no sync debug mode
(CUDA only), no fp16 (refused on a CPU), no airbench (it needs CUDA), no compiled run unless ``--compile``.
Results: ``<out>/device_check.json`` and ``.md``, rewritten after every section.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
FAST = REPO / "configs" / "fast.yaml"
RESNET18 = REPO / "configs" / "resnet18.yaml"
RECORD_MODE = ("train.eval_every_epoch=false", "checkpoint.every_epoch=false")
QUIET = ("logging.wandb.mode=disabled", "logging.level=warning")


# --- one trainer run in its own process --------------------------------------------------------------------------

def child(result_path: Path, preset: str, overrides: list[str], sync_debug: bool, stop_at: Optional[int]) -> None:
    """Train as configured in this process and write what only it can see to ``result_path``."""
    import torch

    from cifarlab.config import load_config
    from cifarlab.errors import Preempted
    from cifarlab.run import loop
    from cifarlab.run.rundir import RunDir

    config = load_config(preset, overrides)
    run = RunDir.of(config.train.output_dir, config.train.run_name or "")
    info: dict[str, Any] = {"stopped": False}
    if stop_at is not None:
        threading.Thread(target=_signal_at, args=(run, stop_at), daemon=True).start()
    if sync_debug:
        torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loop.train(config, preset)
        except Preempted:
            info["stopped"] = True
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    info["sync_warnings"] = len(syncs)
    info["sync_sites"] = dict(Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs).most_common(12))
    info["other_warnings"] = sorted({str(w.message).splitlines()[0][:160] for w in caught if w not in syncs})[:10]
    if config.train.compile:
        from torch._dynamo.utils import counters

        info["graphs"] = int(counters["stats"]["unique_graphs"])
        info["graph_breaks"] = sum(counters["graph_break"].values())
    info["wandb_imported"] = "wandb" in sys.modules
    result_path.write_text(json.dumps(info))


def _signal_at(run: Any, step: int) -> None:
    """SIGUSR1 to this process once the run has logged ``step`` (as SLURM warns a job before its time limit)."""
    while True:
        try:
            lines = run.metrics.read_text().splitlines()
        except OSError:
            lines = []
        if any(json.loads(line).get("step", 0) >= step for line in lines if line.endswith("}")):
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        time.sleep(0.05)


class Check:
    """The sections, their time budget and the results file."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.runs = self.work / "runs"
        shutil.rmtree(self.runs, ignore_errors=True)
        self.results: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "mode": self.mode,
                                        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "sections": {}}

    @property
    def mode(self) -> str:
        return ("cpu" if self.args.cpu else "gpu") + (" tiny" if self.args.tiny else "")

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def section(self, name: str, need_s: float, action: Callable[[], dict[str, Any]]) -> None:
        began = time.monotonic()
        if self.left() < need_s:
            outcome: dict[str, Any] = {"status": f"skipped: {self.left():.0f} s left of --budget-s, "
                                                 f"needs ~{need_s:.0f}"}
        else:
            try:
                outcome = {"status": "ok", **action()}
            except Exception as error:  # recorded; the next section still runs
                outcome = {"status": f"failed: {type(error).__name__}: {error}",
                           "traceback": traceback.format_exc()[-2000:]}
        outcome["seconds"] = round(time.monotonic() - began, 1)
        self.results["sections"][name] = outcome
        print(f"device check: {name}: {outcome['status'].splitlines()[0]} ({outcome['seconds']} s)", flush=True)
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "device_check.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (self.out / "device_check.md").write_text(markdown(self.results))

    # --- running the trainer -------------------------------------------------------------------------------------

    def train(self, name: str, preset: Path, *overrides: str, sync_debug: bool = False,
              stop_at: Optional[int] = None, timeout: Optional[float] = None) -> dict[str, Any]:
        """One trainer run in a fresh process; its own findings, its records' figures and its wall seconds."""
        data = ("data.name=imagefolder", f"data.root={self.args.data}", "data.download=false")
        # On the CPU in fp32 (bf16 convolutions crawl on CPUs without bf16 units), unless the run asks otherwise.
        cpu = ("train.mixed_precision=no", "train.channels_last=false") if self.args.cpu else ()
        every = [*data, *QUIET, *cpu, f"train.output_dir={self.runs}", f"train.run_name={name}", *overrides]
        result = self.work / f"{name}.child.json"
        result.unlink(missing_ok=True)
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(result), "--preset", str(preset),
                   *(["--sync-debug"] if sync_debug else []), *(["--stop-at", str(stop_at)] if stop_at else []),
                   "--", *every]
        began = time.monotonic()
        process = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                                 timeout=timeout or max(self.left(), 30))
        wall = time.monotonic() - began
        if process.returncode != 0 or not result.is_file():
            raise RuntimeError(f"{name}: exit {process.returncode}: {(process.stdout + process.stderr)[-1500:]}")
        return {**json.loads(result.read_text()), **figures(self.runs / name), "wall_s": round(wall, 2)}

    def sizes(self, gpu: tuple[str, ...], tiny: tuple[str, ...]) -> tuple[str, ...]:
        return tiny if self.args.tiny else gpu


def figures(run_dir: Path) -> dict[str, Any]:
    from cifarlab.analysis.results import records

    written = records(run_dir, tolerate_torn_tail=True)
    epochs = [r for r in written if "train/epoch_seconds" in r]
    evaluations = [r for r in written if "test/acc" in r]
    return {"epoch_seconds": [round(r["train/epoch_seconds"], 3) for r in epochs],
            "images_per_s": [round(r["train/epoch_images_per_s"]) for r in epochs],
            "train_seconds": round(sum(r["train/epoch_seconds"] for r in epochs), 3),
            "evaluations": len(evaluations),
            "accuracy": 100 * evaluations[-1]["test/acc"] if evaluations else None,
            "steps": max((r["step"] for r in written), default=0)}


# --- the sections --------------------------------------------------------------------------------------------------

def environment(check: Check) -> dict[str, Any]:
    import accelerate
    import torch

    found = {name: importlib.util.find_spec(name) is not None for name in ("wandb", "omegaconf", "airbench", "scipy")}
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "accelerate": accelerate.__version__,
            "cuda": torch.version.cuda, "card": card, "importable": found,
            "cpu_count": os.cpu_count()}


def data(check: Check) -> dict[str, Any]:
    """airbench's tensors from the JPEG copy (``<work>/airbench/cifar10/{train,test}.pt``); with --tiny, first a
    small JPEG copy (``--tiny-per-class`` training and a fifth as many test images per class) for every run."""
    source = Path(check.args.data)
    if check.args.tiny:
        small = check.work / "cifar10-jpeg-tiny"
        shutil.rmtree(small, ignore_errors=True)
        for split, count in (("train", check.args.tiny_per_class), ("test", max(check.args.tiny_per_class // 5, 2))):
            for folder in sorted((source / split).iterdir()):
                (small / split / folder.name).mkdir(parents=True)
                for image in sorted(folder.iterdir())[:count]:
                    shutil.copy(image, small / split / folder.name / image.name)
        check.args.data = str(small)
        source = small
    target = check.work / "airbench" / "cifar10"
    target.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "test"):
        images, labels, classes = decode(source / split)
        import torch

        torch.save({"images": images, "labels": labels, "classes": classes}, target / f"{split}.pt")
        counts[split] = int(labels.numel())
    return {"airbench_tensors": str(target), "images": counts, "jpeg_root": check.args.data}


def _decode_one(path: str) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def decode(split: Path) -> tuple[Any, Any, list[str]]:
    """uint8 N x 32 x 32 x 3 images, int64 labels and the class names (folders in sorted order) of one split."""
    from multiprocessing import Pool

    import numpy as np
    import torch

    classes = sorted(folder.name for folder in split.iterdir() if folder.is_dir())
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = sorted((split / name).iterdir())
        paths += [str(path) for path in files]
        labels += [index] * len(files)
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        raw = pool.map(_decode_one, paths, chunksize=256)
    images = torch.from_numpy(np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(paths), 32, 32, 3).copy())
    return images, torch.tensor(labels, dtype=torch.int64), classes


def sync(check: Check) -> dict[str, Any]:
    steps = 3 if check.args.tiny else 30
    batch = TINY_BATCH if check.args.tiny else 1024
    found = check.train("sync", FAST, "train.epochs=1", "optim.warmup_epochs=0.2", f"train.batch_size={batch}",
                        f"data.train_size={steps * batch}", *check.sizes(("data.test_size=2000",),
                                                                         ("train.eval_batch_size=20",)),
                        sync_debug=not check.args.cpu)
    found["sync_warnings_per_step"] = round(found["sync_warnings"] / max(found["steps"], 1), 2)
    if check.args.cpu:
        found["note"] = "CPU: no CUDA sync debug mode (the counts are 0 by construction)"
    return found


TINY_BATCH = 16
"""--tiny's batch: 3 steps an epoch on the 5 training images a class it copies (a rehearsal is 9 trainer processes
on a few CPU cores: the fewer images they train on, the sooner it is done)."""


def tiny_fast(check: Check) -> tuple[str, ...]:
    return (f"train.batch_size={TINY_BATCH}", "train.eval_batch_size=20",
            "logging.every_n_steps=1") if check.args.tiny else ()


def fast(check: Check) -> dict[str, Any]:
    epochs = ("train.epochs=2", "optim.warmup_epochs=1") if check.args.tiny else ()
    found = {"eager": check.train("fast-eager", FAST, *RECORD_MODE, *epochs, *tiny_fast(check))}
    if check.args.cpu and not check.args.compile:
        found["compiled"] = {"status": "skipped on the CPU rehearsal (--compile runs it)"}
        return found
    compiled = check.train("fast-compiled", FAST, *RECORD_MODE, *epochs, *tiny_fast(check), "train.compile=true")
    steady = statistics.median(compiled["epoch_seconds"][1:] or compiled["epoch_seconds"])
    compiled["compile_s"] = round(compiled["epoch_seconds"][0] - steady, 2)  # the first epoch's extra time
    found["compiled"] = compiled
    return found


def resume(check: Check) -> dict[str, Any]:
    settings = ("train.epochs=2", "optim.warmup_epochs=0.5", *tiny_fast(check),
                "logging.every_n_steps=5" if not check.args.tiny else "logging.every_n_steps=1")
    stop_step = 2 if check.args.tiny else 20
    whole = check.train("resume-whole", FAST, *settings)
    stopped = check.train("resume-stopped", FAST, *settings, stop_at=stop_step)
    if not stopped["stopped"]:
        raise RuntimeError(f"the run was not stopped by SIGUSR1 after step {stop_step}")
    resumed = check.train("resume-stopped", FAST, *settings, "train.resume=auto")
    from safetensors.torch import load_file

    first = load_file(str(check.runs / "resume-whole" / "model.safetensors"))
    second = load_file(str(check.runs / "resume-stopped" / "model.safetensors"))
    difference = max(float((first[key].float() - second[key].float()).abs().max()) for key in first)
    return {"stopped_at_step": stopped["steps"], "bitwise_equal": difference == 0.0, "largest_difference": difference,
            "accuracy_whole": whole["accuracy"], "accuracy_resumed": resumed["accuracy"],
            "save_and_stop_wall_s": stopped["wall_s"]}


def airbench_child(result_path: Path, seeds: int) -> None:
    """airbench94 (the package's own ``train94``), warmed up, then ``seeds`` runs, in the folder holding
    ``cifar10/{train,test}.pt`` (its loaders read them there and download nothing)."""
    import airbench
    import torch

    test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    airbench.warmup94(verbose=False)
    runs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        torch.cuda.synchronize()
        began = time.perf_counter()
        model = airbench.train94(run=seed, verbose=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        runs.append({"seed": seed, "wall_s": round(seconds, 3),
                     "accuracy": 100 * float(airbench.evaluate(model, test, tta_level=2))})
    result_path.write_text(json.dumps(runs))


def versus(check: Check) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if check.args.cpu:
        found["airbench94"] = {"status": "skipped: airbench needs CUDA (.cuda(), torch.cuda.Event)"}
    else:
        result = check.work / "airbench.child.json"
        process = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--airbench", str(result),
                                  "--seeds", str(check.args.seeds)], capture_output=True, text=True,
                                 cwd=check.work / "airbench", timeout=max(check.left(), 30))
        if process.returncode != 0:
            found["airbench94"] = {"status": f"failed: {(process.stdout + process.stderr)[-1500:]}"}
        else:
            found["airbench94"] = summary(json.loads(result.read_text()))
    epochs = ("train.epochs=2", "optim.warmup_epochs=1") if check.args.tiny else ()
    runs = []
    for seed in range(check.args.seeds):
        run = check.train(f"versus-fast-{seed}", FAST, *RECORD_MODE, *epochs, *tiny_fast(check), f"train.seed={seed}")
        runs.append({"seed": seed, "wall_s": run["wall_s"], "train_s": run["train_seconds"],
                     "accuracy": run["accuracy"], "evaluations": run["evaluations"]})
    found["fast"] = summary(runs)
    return found


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    accuracy = [r["accuracy"] for r in runs]
    return {"runs": runs, "accuracy_mean": round(statistics.mean(accuracy), 3),
            "accuracy_sd": round(statistics.stdev(accuracy), 3) if len(accuracy) > 1 else None,
            "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 3)}


def precision(check: Check) -> dict[str, Any]:
    batch, steps = (8, 3) if check.args.tiny else (512, 40)  # tiny: onecycle's 3 steps at least, of few images
    if check.args.tiny:  # each path and each precision once (no fp16: refused on a CPU)
        pairs = [("tensor", "no"), ("torchvision", "bf16")]
    else:
        pairs = [(loader, mixed) for loader in ("tensor", "torchvision") for mixed in ("no", "bf16", "fp16")]
    found = {}
    for loader, mixed in pairs:
        if check.left() < 30 and not check.args.tiny:
            found[f"{loader}-{mixed}"] = {"status": "skipped: out of time"}
            continue
        run = check.train(f"resnet18-{loader}-{mixed}", RESNET18, "train.epochs=1", f"train.batch_size={batch}",
                          f"data.train_size={batch * steps}", f"data.loader={loader}",
                          f"train.mixed_precision={mixed}", *check.sizes(("train.eval_batch_size=1000",
                                                                          "data.test_size=2000"),
                                                                         ("train.eval_batch_size=20",)),
                          "data.num_workers=" + ("2" if check.args.cpu else "8"))
        found[f"{loader}-{mixed}"] = {"images_per_s": run["images_per_s"][0], "epoch_s": run["epoch_seconds"][0],
                                      "steps": run["steps"], "wall_s": run["wall_s"]}
    return found


# --- the report --------------------------------------------------------------------------------------------------

def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Device check ({results['mode']})", "", f"{results['date']}; `{results['command']}`", ""]
    for name, outcome in results["sections"].items():
        lines += [f"## {name}: {outcome['status'].splitlines()[0]} ({outcome['seconds']} s)", ""]
        for key, value in outcome.items():
            if key in ("status", "seconds", "traceback"):
                continue
            lines.append(f"- {key}: `{json.dumps(value)}`")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="the unpacked JPEG copy (train/ and test/ with a folder per class)")
    parser.add_argument("--work", default="/tmp/device-check", help="scratch: runs, airbench tensors, tiny data")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/device-check/out"))
    parser.add_argument("--cpu", action="store_true", help="the rehearsal: no CUDA (see the module docstring)")
    parser.add_argument("--tiny", action="store_true", help="small data, few steps, 2 seeds")
    parser.add_argument("--tiny-per-class", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="with --cpu: also the compiled run")
    parser.add_argument("--seeds", type=int, default=None, help="airbench94 and fast-preset seeds (5; --tiny: 2)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for all sections (a call has 600)")
    parser.add_argument("--sections", default="environment,data,sync,fast,resume,versus,precision")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--airbench", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--sync-debug", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stop-at", type=int, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.preset, args.overrides, args.sync_debug, args.stop_at)
        return
    if args.airbench:
        airbench_child(args.airbench, args.seeds)
        return
    if not args.data:
        parser.error("--data is required")
    args.seeds = args.seeds or (2 if args.tiny else 5)
    check = Check(args)
    need = {"environment": 0, "data": 0, "sync": 20, "fast": 40, "resume": 40, "versus": 60, "precision": 40}
    actions = {"environment": environment, "data": data, "sync": sync, "fast": fast, "resume": resume,
               "versus": versus, "precision": precision}
    for name in args.sections.split(","):
        check.section(name, 0 if args.tiny else need[name], lambda name=name: actions[name](check))
    failed = [name for name, outcome in check.results["sections"].items() if outcome["status"].startswith("failed")]
    print(f"device check: results in {check.out / 'device_check.md'}" + (f"; failed: {', '.join(failed)}"
                                                                           if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
