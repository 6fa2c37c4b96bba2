"""CPU time to accuracy: from a cold `accelerate launch` of the default preset to a recorded test accuracy
of at least 60 % on the CIFAR-10 JPEG copy. Target: <= 30 s wall on a 2-core machine (the tutorial's
script needs 371 s for 53.8 %).

    python bench/time_to_accuracy.py --data-root /data/cifar10-jpeg --rounds 3

Each round is a fresh `accelerate launch -m cifarlab.train data.name=imagefolder data.root=ROOT` with the
default preset and nothing else changed (W&B included: offline without credentials). The clock starts
before the launcher does and stops at the `time` of the first evaluation record in the run's metrics.jsonl
with test/acc >= --target % (written right after that epoch's evaluation). The decoded uint8 cache
(<root>/.cifarlab-cache) is built beforehand, as the first run on a new copy would (its one-off cost is
reported separately). Results: bench/results/time_to_accuracy.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import launch, machine, save, timed_epochs


def build_cache(data_root: str) -> float:
    """Decode the copy into the tensor cache if it is not there yet; seconds it took (0 when cached)."""
    from cifarlab.config import DataConfig
    from cifarlab.data import build_data

    start = time.perf_counter()
    build_data(DataConfig(name="imagefolder", root=data_root, loader="tensor"), seed=0)
    return time.perf_counter() - start


def _epochs(epochs: list[dict[str, float]]) -> str:
    return " / ".join(f"{e['accuracy']:.2f} % @ {e['seconds']:.1f}s" for e in epochs)


def _seconds(value: Optional[float]) -> str:
    return "never" if value is None else f"{value:.1f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="image-folder copy of CIFAR-10 (train/, test/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", type=float, default=60.0, help="test accuracy to reach, in %%")
    parser.add_argument("--limit", type=float, default=30.0, help="seconds allowed from a cold start")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides (default: none, the default preset)")
    args = parser.parse_args()
    cache_seconds = build_cache(args.data_root)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            command = launch(["data.name=imagefolder", f"data.root={args.data_root}", f"train.output_dir={tmp}",
                              f"train.run_name=round{round_}", *args.overrides])
            epochs, wall = timed_epochs(command, Path(tmp) / f"round{round_}")
            reached = next((e for e in epochs if e["accuracy"] >= args.target), None)
            rounds.append({"epochs": epochs, "wall_s": wall, "reached_s": reached and reached["seconds"],
                           "reached_epoch": reached and reached["epoch"]})
            shown = f"{reached['seconds']:.1f}s (epoch {reached['epoch']})" if reached else "never"
            print(f"round {round_ + 1}: {args.target:g} % after {shown}; final {epochs[-1]['accuracy']:.2f} % "
                  f"after {wall:.1f}s", flush=True)
    times = [r["reached_s"] for r in rounds if r["reached_s"] is not None]
    median = statistics.median(times) if len(times) == len(rounds) else None
    met = median is not None and median <= args.limit
    summary = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "target_accuracy": args.target,
               "limit_s": args.limit, "overrides": args.overrides, "cache_build_s": cache_seconds,
               "rounds": rounds, "median_s": median, "met": met}
    rows = "\n".join(f"| {i + 1} | {_epochs(r['epochs'])} | {_seconds(r['reached_s'])} |" for i, r in enumerate(rounds))
    usage = "python bench/time_to_accuracy.py --data-root ROOT" + "".join(f" {o}" for o in args.overrides)
    save("time_to_accuracy", summary, (
        f"# CPU time to {args.target:g} % test accuracy\n\nMachine: {summary['machine']}; {summary['date']}.\n"
        f"`{usage}`: a cold `accelerate launch -m cifarlab.train` of the default preset on the CIFAR-10 JPEG "
        f"copy, timed from before the launcher starts to the epoch's evaluation record in metrics.jsonl. "
        f"Decoded-image cache present "
        f"({'built now in ' + format(cache_seconds, '.0f') + 's' if cache_seconds > 5 else 'built before'}).\n\n"
        f"| round | epochs: test accuracy @ seconds since launch | time to {args.target:g} % |\n|---|---|---|\n"
        f"{rows}\n\n"
        f"Median: **{_seconds(median)}** "
        f"(target <= {args.limit:g}s: {'met' if met else 'missed'}).\n"))


if __name__ == "__main__":
    main()
