"""CPU overhead: cifarlab's training images/s beside a raw PyTorch loop on the same data in memory.

    python bench/cpu_overhead.py --data-root /data/cifar10-jpeg --rounds 3

Both train the tutorial's LeNet for one epoch of CIFAR-10 at batch 128 (Nesterov SGD, no augmentation)
from uint8 tensors in memory (cifarlab's tensor cache, decoded once). Runs alternate, each in a fresh
process: raw, cifarlab, raw, cifarlab, ... The target is cifarlab >= 0.95x the raw loop's images/s.
cifarlab's figure is its own `train_images_per_s` (training only, as the raw loop's); its wall time
also includes start-up and evaluation. Results go to bench/results/cpu_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 128


def raw_loop(data_root: str) -> float:
    """One epoch of a plain loop; returns training images/s."""
    import torch
    import torch.nn.functional as F
    from torchvision import datasets

    from cifarlab.models import LeNet
    from cifarlab.tensor_data import load_tensors

    images, labels = load_tensors(datasets.ImageFolder(f"{data_root}/train"), data_root, "train", print)
    torch.manual_seed(0)
    model = LeNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    order = torch.randperm(len(labels))
    steps = len(labels) // BATCH
    start = time.perf_counter()
    for step in range(steps):
        rows = order[step * BATCH:(step + 1) * BATCH]
        x = (images[rows].float() / 255 - mean) / std
        loss = F.cross_entropy(model(x), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * BATCH / (time.perf_counter() - start)


def cifarlab_run(data_root: str, out_dir: Path, name: str) -> tuple[float, float]:
    """One epoch through the real CLI; returns (training images/s, wall seconds)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cifarlab.train",
               "data.name=imagefolder", f"data.root={data_root}", "data.loader=tensor", "data.augment=none",
               "train.epochs=1", f"train.batch_size={BATCH}", "logging.wandb.mode=disabled", "--quiet",
               f"train.output_dir={out_dir}", f"train.run_name={name}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    wall = time.perf_counter() - start
    record = json.loads((out_dir / name / "metrics.jsonl").read_text().splitlines()[-1])
    return record["train_images_per_s"], wall


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    import torch

    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), " \
           f"Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="image-folder copy of CIFAR-10 (train/, test/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)  # the raw loop's own process
    args = parser.parse_args()
    if args.raw:
        print(json.dumps({"images_per_s": raw_loop(args.data_root)}))
        return
    raw, ours, walls = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            result = subprocess.run([sys.executable, __file__, "--raw", "--data-root", args.data_root], check=True,
                                    capture_output=True, text=True, cwd=REPO)
            raw.append(json.loads(result.stdout.splitlines()[-1])["images_per_s"])
            speed, wall = cifarlab_run(args.data_root, Path(tmp), f"round{round_}")
            ours.append(speed)
            walls.append(wall)
            print(f"round {round_ + 1}: raw {raw[-1]:,.0f} images/s, cifarlab {ours[-1]:,.0f} images/s "
                  f"({ours[-1] / raw[-1]:.3f}x), cifarlab wall {wall:.1f}s", flush=True)
    ratio = statistics.median(ours) / statistics.median(raw)
    summary = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "batch": BATCH, "rounds": args.rounds,
               "raw_images_per_s": raw, "cifarlab_images_per_s": ours, "cifarlab_wall_s": walls,
               "median_ratio": ratio, "target": 0.95, "met": ratio >= 0.95}
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "cpu_overhead.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = "\n".join(f"| {i + 1} | {r:,.0f} | {o:,.0f} | {o / r:.3f} | {w:.1f} |"
                     for i, (r, o, w) in enumerate(zip(raw, ours, walls)))
    (results / "cpu_overhead.md").write_text(
        f"# CPU overhead: cifarlab vs a raw loop\n\nMachine: {summary['machine']}; {summary['date']}.\n"
        f"LeNet, batch {BATCH}, one epoch of the CIFAR-10 JPEG copy from uint8 tensors in memory, no augmentation; "
        f"runs alternate, each in a fresh process.\n\n| round | raw images/s | cifarlab images/s | ratio | cifarlab wall s |\n"
        f"|---|---|---|---|---|\n{rows}\n\nMedian ratio: **{ratio:.3f}x** (target >= 0.95x: "
        f"{'met' if summary['met'] else 'missed'}).\n")
    print(f"median ratio {ratio:.3f}x -> bench/results/cpu_overhead.md")


if __name__ == "__main__":
    main()
