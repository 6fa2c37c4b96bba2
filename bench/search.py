"""The same small search twice on the CIFAR-10 JPEG copy, end to end on the CPU, side by side: chosen on a held-out
validation split (configs/sweeps/search-jpeg.yaml as written: 5,000 training images held out, metric val_acc) and
chosen on the test set (the same file with data.val_size=0: metric final_acc, the search as it was before issue 30).
Each is 12 TPE trials over the default preset's learning rate and weight decay, median pruning, the 2 best re-run on 3
fresh seeds next to the default preset; then what a user looks at: compare on the search folder (and its PNG), the
confirmation's table, --best.

    python bench/search.py --data-root /data/cifar10-jpeg [--output /tmp/bench-search] [--parallel 1]

The runs go to --output/val and --output/test (fresh folders). Results: bench/results/search.{json,md} and
bench/results/search.png (the validation search's picture).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, machine, save

SEARCH = "configs/sweeps/search-jpeg.yaml"
NAME = "lr-wd-search-jpeg"
VARIANTS = {"val": [], "test": ["data.val_size=0"]}
"""Each search's extra overrides: as the file says (a validation split), and as before (chosen on the test set)."""
FENCE = "```"


def run(command: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout, time.perf_counter() - start


def confirmed(folder: Path, metric: str) -> dict[str, Any]:
    """compare's JSON of the confirmation on ``metric``."""
    shown, _ = run([sys.executable, "-m", "cifarlab.compare", str(folder / "confirm"), "--json", "--metric", metric])
    return json.loads(shown)


def search(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """One search and its confirmation, and what compare, --best and --list say of it."""
    overrides = [f"data.root={args.data_root}", f"train.output_dir={Path(args.output) / variant}", *VARIANTS[variant]]
    sweep = [sys.executable, "-m", "cifarlab.sweep", SEARCH, *overrides]
    folder = Path(args.output) / variant / NAME
    if folder.exists():
        sys.exit(f"{folder} exists: the bench times a search from an empty folder; remove it or pick another --output")
    searched, seconds = run([*sweep, "--parallel", str(args.parallel)])
    png = [] if variant != "val" else ["--png", str(RESULTS / "search.png")]
    shown, _ = run([sys.executable, "-m", "cifarlab.compare", str(folder), *png])
    best, _ = run([*sweep, "--best"])
    listed, _ = run([*sweep, "--list"])
    test = confirmed(folder, "final_acc")
    val = confirmed(folder, "val_acc") if variant == "val" else None
    groups = []
    for index, group in enumerate(test["groups"]):
        groups.append({"label": group["label"], "base": group["label"] == test["baseline"], "n": group["n"],
                       "test": group["mean"], "val": val["groups"][index]["mean"] if val else None})
    scores = [float(value) for value in re.findall(r"\tcomplete\ttrial-\d+\t([\d.]+) %", listed)]
    return {"command": " ".join(["python -m cifarlab.sweep", SEARCH, *overrides]), "seconds": round(seconds, 1),
            "trials": listed.count("\ttrial-"), "pruned": len(re.findall(r"\tpruned\t", listed)),
            "best_score": max(scores) / 100 if scores else None, "groups": groups,
            "verdicts": [d["verdict"] for d in test["differences"]], "best": best.strip(),
            "progress": [line for line in searched.splitlines() if line.startswith("sweep ")
                         and ": started;" not in line and "finished in" not in line],
            "table": searched[searched.index("\n", searched.rindex("trial(s) in")) + 1:].rstrip(),
            "compare": shown.rstrip(), "listed": listed.rstrip()}


def side_by_side(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table: each search's score, and its winners' and the preset's figures on fresh seeds."""
    rows = ["| chosen on | search's best score | setting (fresh seeds) | validation | test |", "|---|---|---|---|---|"]
    for variant, result in results.items():
        score = f"{100 * result['best_score']:.2f} %" if result["best_score"] is not None else "-"
        for group in result["groups"]:
            val = f"{100 * group['val']:.2f} %" if group["val"] is not None else "(none held out)"
            what = f"{group['label']}" + (" (the preset: control)" if group["base"] else "")
            rows.append(f"| {'validation split' if variant == 'val' else 'test set'} | {score} | {what} | {val} | "
                        f"{100 * group['test']:.2f} % |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="the JPEG copy (train/ and test/ folders)")
    parser.add_argument("--output", default="/tmp/bench-search", help="train.output_dir of the trials")
    parser.add_argument("--parallel", type=int, default=1, help="trials at a time (default 1: both cores each)")
    args = parser.parse_args()
    results = {variant: search(args, variant) for variant in VARIANTS}
    summary = {"machine": machine(), **{variant: {key: value for key, value in result.items()
                                                  if key not in ("progress", "table", "compare", "listed")}
                                        for variant, result in results.items()}}
    sections = []
    for variant, result in results.items():
        title = "chosen on the validation split" if variant == "val" else "chosen on the test set (data.val_size=0)"
        sections.append(f"""## The search {title}

`{result['command']}`: {result['seconds']:.0f} s ({result['trials']} trials, {result['pruned']} pruned, then the
confirmation runs).

{FENCE}
{chr(10).join(result['progress'])}
{FENCE}

The confirmation (compare's table, the base configuration is the baseline):

{FENCE}
{result['table']}
{FENCE}

`python -m cifarlab.compare` on the search folder{' (the picture below)' if variant == 'val' else ''}:

{FENCE}
{result['compare']}
{FENCE}

`--best` and `--list`:

{FENCE}
{result['best']}

{result['listed']}
{FENCE}
""")
    markdown = f"""# A search chosen on a validation split vs one chosen on the test set (CIFAR-10 JPEG copy, CPU)

Machine: {machine()}; {time.strftime('%Y-%m-%d')}.
`python bench/search.py --data-root ROOT --parallel {args.parallel}`: the same search twice, one after the other in
one job, from empty folders. Scores are the search's own metric (validation accuracy, or test accuracy); the
settings' figures are means over 3 fresh seeds (the confirmation).

{side_by_side(results)}

{chr(10).join(sections)}
![the validation search](search.png)
"""
    save("search", summary, markdown)


if __name__ == "__main__":
    main()
