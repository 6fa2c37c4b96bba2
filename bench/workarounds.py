"""What cifarlab.workarounds buys: batch-4 LeNet training steps (the tutorial preset's shape) through
Accelerate, with the public API and with the workarounds, alternating in one process, on the CPU.

    python bench/workarounds.py --rounds 7 --steps 2000

Each round times --steps steps of each variant (one thread); results: bench/results/workarounds.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import accelerate.optimizer
import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifarlab import workarounds
from cifarlab.models import LeNet

from common import machine, save


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
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    original = accelerate.optimizer.is_lomo_available
    public, patched = [], []
    for _ in range(args.rounds):
        accelerate.optimizer.is_lomo_available = original
        public.append(steps_per_s(accelerator, args.steps, bypass=False))
        accelerate.optimizer.is_lomo_available = functools.lru_cache(maxsize=None)(original)
        patched.append(steps_per_s(accelerator, args.steps, bypass=True))
    ratios = [b / a for a, b in zip(public, patched)]
    summary = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "accelerate": accelerate.__version__,
               "steps": args.steps, "public_steps_per_s": public, "workarounds_steps_per_s": patched,
               "ratios": ratios, "median_ratio": statistics.median(ratios)}
    rows = "\n".join(f"| {i + 1} | {a:,.0f} | {b:,.0f} | {b / a:.3f} |"
                     for i, (a, b) in enumerate(zip(public, patched)))
    save("workarounds", summary, (
        f"# Accelerate workarounds: batch-4 LeNet steps on the CPU\n\nMachine: {summary['machine']}; accelerate "
        f"{accelerate.__version__}; {summary['date']}. `python bench/workarounds.py --rounds {args.rounds} --steps "
        f"{args.steps}`: forward, backward, `optimizer.step()`, zero_grad, one thread, alternating.\n\n"
        f"| round | public API steps/s | with cifarlab.workarounds | ratio |\n|---|---|---|---|\n{rows}\n\n"
        f"Median ratio: **{summary['median_ratio']:.3f}**.\n"))


if __name__ == "__main__":
    main()
