"""A small search and its confirmation on the CIFAR-10 JPEG copy, end to end on the CPU: configs/sweeps/
search-jpeg.yaml (12 TPE trials over the default preset's learning rate and weight decay, median pruning, the 2
best re-run on 3 fresh seeds next to the default preset), then what a user looks at: compare on the search folder
(and its PNG), the confirmation's table, --best.

    python bench/search.py --data-root /data/cifar10-jpeg [--output /tmp/bench-search] [--parallel 1]

The runs go to --output (a fresh folder each time unless it holds this search: then the study continues). Results:
bench/results/search.{json,md} and bench/results/search.png.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, machine, save

SEARCH = "configs/sweeps/search-jpeg.yaml"
NAME = "lr-wd-search-jpeg"


def run(command: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="the JPEG copy (train/ and test/ folders)")
    parser.add_argument("--output", default="/tmp/bench-search", help="train.output_dir of the trials")
    parser.add_argument("--parallel", type=int, default=1, help="trials at a time (default 1: both cores each)")
    args = parser.parse_args()
    overrides = [f"data.root={args.data_root}", f"train.output_dir={args.output}"]
    sweep = [sys.executable, "-m", "cifarlab.sweep", SEARCH, *overrides]
    compare = [sys.executable, "-m", "cifarlab.compare"]
    folder = Path(args.output) / NAME
    if folder.exists():
        sys.exit(f"{folder} exists: the bench times a search from an empty folder; remove it or pick another --output")
    searched, seconds = run([*sweep, "--parallel", str(args.parallel)])
    shown, _ = run([*compare, str(folder), "--png", str(RESULTS / "search.png")])
    best, _ = run([*sweep, "--best"])
    listed, _ = run([*sweep, "--list"])
    progress = [line for line in searched.splitlines() if line.startswith("sweep ") and ": started;" not in line
                and "finished in" not in line]
    # What follows the confirmation runs' tally line: compare's table and the search-vs-confirmed lines.
    end = searched.rindex("trial(s) in")
    table = searched[searched.index("\n", end) + 1:]
    pruned = len(re.findall(r"\tpruned\t", listed))
    summary = {"machine": machine(), "seconds": round(seconds, 1), "trials": listed.count("\ttrial-"),
               "pruned": pruned, "best": best.strip()}
    fence = "```"
    markdown = f"""# A search and its confirmation on the CIFAR-10 JPEG copy (CPU)

Machine: {machine()}; {time.strftime('%Y-%m-%d')}.
`python bench/search.py --data-root ROOT --parallel {args.parallel}`, which runs
`{' '.join(['python -m cifarlab.sweep', SEARCH, *overrides])}` from an empty folder, then `compare` on the search
folder, `--best` and `--list`. The search and its confirmation took
**{seconds:.0f} s** ({summary['trials']} trials, {pruned} pruned, then 9 confirmation runs).

## The search's progress and the confirmation (the sweep's own lines)

{fence}
{chr(10).join(progress)}
{fence}

## The confirmation: compare's table (the base configuration is the baseline)

{fence}
{table.rstrip()}
{fence}

## `python -m cifarlab.compare {folder} --png bench/results/search.png`

{fence}
{shown.rstrip()}
{fence}

![the search](search.png)

## `--best` and `--list`

{fence}
{best.rstrip()}

{listed.rstrip()}
{fence}
"""
    save("search", summary, markdown)


if __name__ == "__main__":
    main()
