"""What cifarlab.run.workarounds buys: batch-4 LeNet training steps (the tutorial preset's shape) through
Accelerate, with the public API, with each workaround alone and with both, alternating in one process, on the
CPU.

    python bench/workarounds.py --rounds 21 --steps 500

Each round times --steps steps of each variant (one thread); results: bench/results/workarounds.{json,md}. The
workarounds are measured only where cifarlab.run.workarounds.apply() finds the installed Accelerate allows them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import accelerate
import accelerate.optimizer
import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifarlab.models import LeNet
from cifarlab.run import workarounds

from common import machine, save

VARIANTS = {"public API": (False, False), "cached package check": (True, False), "direct zero_grad": (False, True),
            "both (cifarlab)": (True, True)}
"""Each variant: (cache the lomo check, bypass zero_grad)."""


def steps_per_s(accelerator: Accelerator, steps: int, bypass: bool) -> float:
    model = LeNet()
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model(images), labels)
        accelerator.backward(loss)
        optimizer.step()
        if bypass:
            workarounds.zero_grad(optimizer, accelerator)
        else:
            optimizer.zero_grad()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    status = workarounds.apply()
    if not (status.package_check_cached and status.zero_grad_bypassed):
        sys.exit(f"bench/workarounds.py: {status.note()}; nothing to measure")
    cached = accelerate.optimizer.is_lomo_available
    original = cached.__wrapped__
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (cache, bypass) in VARIANTS.items():
            accelerate.optimizer.is_lomo_available = cached if cache else original
            rates[name].append(steps_per_s(accelerator, args.steps, bypass))
    public = rates["public API"]
    ratios = {name: statistics.median(b / a for a, b in zip(public, rate)) for name, rate in rates.items()}
    summary = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "accelerate": accelerate.__version__,
               "steps": args.steps, "steps_per_s": rates, "median_ratio_to_public": ratios,
               "median_ratio": ratios["both (cifarlab)"]}
    names = list(VARIANTS)
    rows = "\n".join(f"| {i + 1} | " + " | ".join(f"{rates[name][i]:,.0f}" for name in names)
                     + f" | {rates[names[-1]][i] / public[i]:.3f} |" for i in range(args.rounds))
    medians = " | ".join(f"{ratios[name]:.3f}" for name in names)
    save("workarounds", summary, (
        f"# Accelerate workarounds: batch-4 LeNet steps on the CPU\n\nMachine: {summary['machine']}; accelerate "
        f"{accelerate.__version__}; {summary['date']}. `python bench/workarounds.py --rounds {args.rounds} --steps "
        f"{args.steps}`: forward, backward, `optimizer.step()`, zero_grad, one thread, the variants alternating in "
        f"each round. Steps per second:\n\n| round | {' | '.join(names)} | both / public |\n"
        f"|---|{'---|' * (len(names) + 1)}\n{rows}\n| median ratio to the public API | {medians} | |\n\n"
        f"Both workarounds: **{ratios[names[-1]]:.3f}x** the public API's steps per second (median of the "
        f"per-round ratios).\n"))


if __name__ == "__main__":
    main()
