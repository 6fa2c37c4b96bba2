"""What each speed/accuracy switch buys on a CPU: the default preset (LeNet, 3 epochs, tensor path) with one
switch changed at a time, each run a fresh `accelerate launch`, over several seeds.

    python bench/tricks.py --data-root /data/cifar10-jpeg --seeds 2

Reports each variant's final test accuracy (mean over seeds) and training images/s (median over epochs and
seeds) beside the baseline. On a GPU the speed switches (channels_last, bf16, torch.compile) matter far
more than here: bench/gpu.py measures the fast preset there. Results: bench/results/tricks.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import evaluations, launch, machine, save, timed_epochs

VARIANTS: dict[str, list[str]] = {
    "default preset (EMA 0.99, TTA flip)": [],
    "no EMA": ["train.ema=null"],
    "no TTA": ["train.tta=none"],
    "no EMA, no TTA": ["train.ema=null", "train.tta=none"],
    "TTA flip_translate": ["train.tta=flip_translate"],
    "label smoothing 0.1": ["optim.label_smoothing=0.1"],
    "cutout 8": ["data.cutout=8"],
    "channels_last": ["train.channels_last=true"],
    "bf16 autocast": ["train.mixed_precision=bf16"],
    "torch.compile": ["train.compile=true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="image-folder copy of CIFAR-10 (train/, test/)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            runs = []
            for seed in range(args.seeds):
                run_name = f"{len(results)}-{seed}"
                run_dir = Path(tmp) / run_name
                _, wall = timed_epochs(launch(["data.name=imagefolder", f"data.root={args.data_root}",
                                               f"train.seed={seed}", "logging.wandb.mode=disabled",
                                               f"train.output_dir={tmp}", f"train.run_name={run_name}", *overrides]),
                                       run_dir)
                records = evaluations(run_dir)
                runs.append({"seed": seed, "accuracy": 100 * records[-1]["test/acc"], "wall_s": wall,
                             "images_per_s": [r["train/epoch_images_per_s"] for r in records],
                             "first_epoch_s": records[0]["train/epoch_seconds"]})
            results[name] = {"overrides": overrides, "runs": runs,
                             "accuracy": statistics.mean(r["accuracy"] for r in runs),
                             "images_per_s": statistics.median(x for r in runs
                                                               for x in r["images_per_s"][1:] or r["images_per_s"])}
            print(f"{name}: {results[name]['accuracy']:.2f} %, {results[name]['images_per_s']:,.0f} images/s",
                  flush=True)
    base = next(iter(results.values()))
    rows = "\n".join(
        f"| {name} | `{' '.join(r['overrides']) or '-'}` | {r['accuracy']:.2f} % "
        f"| {r['accuracy'] - base['accuracy']:+.2f} "
        f"| {r['images_per_s']:,.0f} | {r['images_per_s'] / base['images_per_s']:.2f}x "
        f"| {statistics.mean(x['wall_s'] for x in r['runs']):.0f} |" for name, r in results.items())
    summary = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "seeds": args.seeds, "variants": results}
    save("tricks", summary, (
        f"# Switches on a CPU: the default preset with one change at a time\n\nMachine: {summary['machine']}; "
        f"{summary['date']}.\n`python bench/tricks.py --data-root ROOT --seeds {args.seeds}`: LeNet, 3 epochs, tensor "
        f"path, CIFAR-10 JPEG copy; accuracy is the mean over {args.seeds} seeds, images/s the median over epochs "
        f"after the first (training only), wall the mean per run. Differences below ~0.5 points are within "
        f"seed-to-seed noise, and this VM's speed varies by up to 30 % between runs.\n\n"
        f"| variant | overrides | test accuracy | vs first row | images/s | vs first row | wall s |\n"
        f"|---|---|---|---|---|---|---|\n{rows}\n"))


if __name__ == "__main__":
    main()
