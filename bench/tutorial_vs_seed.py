"""CPU vs the seed: cifarlab's `tutorial` preset beside the tutorial's own script (bench/seed_tutorial.py), same
recipe, same machine, one invocation. Targets: >= 3x the script's training images/s, test accuracy within
3 points of it.

    python bench/tutorial_vs_seed.py --data-root /data/cifar10-jpeg --rounds 1

Each round runs the script, then `accelerate launch -m cifarlab.train --config configs/tutorial.yaml` (fresh
processes). Images/s are training images over training seconds for both (2 epochs x 50,000 images);
cifarlab's wall time also covers start-up and its evaluation after each epoch.
Results: bench/results/tutorial_vs_seed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, evaluations, launch, machine, save, timed_epochs


def seed_run(data_root: str) -> dict[str, float]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "bench" / "seed_tutorial.py"), "--data-root", data_root],
                            check=True, capture_output=True, text=True, cwd=REPO)
    return {**json.loads(result.stdout.splitlines()[-1]), "wall_s": time.perf_counter() - start}


def cifarlab_run(data_root: str, out_dir: Path, name: str) -> dict[str, float]:
    _, wall = timed_epochs(launch(["--config", "configs/tutorial.yaml", "data.name=imagefolder",
                                   f"data.root={data_root}", "logging.wandb.mode=disabled",
                                   f"train.output_dir={out_dir}", f"train.run_name={name}"]), out_dir / name)
    records = evaluations(out_dir / name)
    train_seconds = sum(r["train/epoch_seconds"] for r in records)
    images = sum(r["train/epoch_images_per_s"] * r["train/epoch_seconds"] for r in records)
    return {"train_seconds": train_seconds, "images_per_s": images / train_seconds,
            "accuracy": 100 * records[-1]["test/acc"], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="image-folder copy of CIFAR-10 (train/, test/)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            seed = seed_run(args.data_root)
            ours = cifarlab_run(args.data_root, Path(tmp), f"round{round_}")
            rounds.append({"seed": seed, "cifarlab": ours})
            print(f"round {round_ + 1}: script {seed['images_per_s']:,.0f} images/s {seed['accuracy']:.2f} %, "
                  f"cifarlab {ours['images_per_s']:,.0f} images/s {ours['accuracy']:.2f} %", flush=True)
    speedup = statistics.median(r["cifarlab"]["images_per_s"] / r["seed"]["images_per_s"] for r in rounds)
    gap = statistics.median(r["cifarlab"]["accuracy"] - r["seed"]["accuracy"] for r in rounds)
    met = speedup >= 3 and abs(gap) <= 3
    summary = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "rounds": rounds, "median_speedup": speedup,
               "median_accuracy_gap": gap, "met": met}
    rows = "\n".join(
        f"| {i + 1} | {r['seed']['images_per_s']:,.0f} | {r['seed']['train_seconds']:.0f} "
        f"| {r['seed']['accuracy']:.2f} % | {r['cifarlab']['images_per_s']:,.0f} "
        f"| {r['cifarlab']['train_seconds']:.0f} | {r['cifarlab']['wall_s']:.0f} "
        f"| {r['cifarlab']['accuracy']:.2f} % |" for i, r in enumerate(rounds))
    save("tutorial_vs_seed", summary, (
        f"# CPU: the tutorial preset vs the tutorial's script\n\nMachine: {summary['machine']}; {summary['date']}.\n"
        f"`python bench/tutorial_vs_seed.py --data-root ROOT --rounds {args.rounds}` on the CIFAR-10 JPEG copy.\n\n"
        f"| round | script images/s | script train s | script accuracy | cifarlab images/s | cifarlab train s "
        f"| cifarlab wall s | cifarlab accuracy |\n|---|---|---|---|---|---|---|---|\n{rows}\n\n"
        f"Speed-up: **{speedup:.2f}x** (target >= 3x); accuracy difference: **{gap:+.2f} points** (target within 3): "
        f"{'met' if met else 'missed'}.\n"))


if __name__ == "__main__":
    main()
