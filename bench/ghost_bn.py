"""What ghost batch norm (model.bn_group_size) costs per training step on the CPU: convnet_bn and resnet18 with
BatchNorm2d and with GhostBatchNorm2d, alternating in one process; and, on 2 gloo processes, the one all-reduce
of the running statistics per optimizer step that the option adds against the buffer broadcast per forward
that DDP does by default (and the option turns off).

    python bench/ghost_bn.py --batch 128 --group 32 --rounds 5

A step is forward, loss, backward, SGD step and zero_grad on random 32x32 images (the machine's default
threads); results: bench/results/ghost_bn.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifarlab.config import ModelConfig
from cifarlab.models import build_model
from cifarlab.models.batchnorm import ghost_modules

from common import machine, save

STEPS = {"convnet_bn": 10, "resnet18": 2}
"""Timed steps per round and variant: a resnet18 step at batch 128 takes seconds on 2 cores."""


def steps_per_s(name: str, group: int | None, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, bn_group_size=group), 10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        loss_fn(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: first-call allocations
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def _collectives(rank: int, port: int, names: list[str], repeats: int, out: dict[str, Any]) -> None:
    """One of 2 gloo processes: ms per all-reduce of the flat running statistics (the option's one per
    optimizer step) and per broadcast of the same floats plus the batch counters (what DDP's default
    broadcast_buffers sends before every forward: it coalesces the buffers into one tensor per dtype)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for name in names:
            ghosts = ghost_modules(build_model(ModelConfig(name=name, bn_group_size=1), 10))
            flat = torch.zeros(sum(2 * m.num_features for m in ghosts))
            counters = torch.zeros(len(ghosts), dtype=torch.long)
            timings: dict[str, list[float]] = {"all_reduce": [], "broadcast": []}
            for _ in range(repeats):
                dist.barrier()
                start = time.perf_counter()
                dist.all_reduce(flat)
                timings["all_reduce"].append(time.perf_counter() - start)
                dist.barrier()
                start = time.perf_counter()
                dist.broadcast(flat, src=0)
                dist.broadcast(counters, src=0)
                timings["broadcast"].append(time.perf_counter() - start)
            if rank == 0:
                # A manager's dict hands out copies: store each entry whole.
                out[name] = {"floats": flat.numel(),
                             **{key: 1000 * statistics.median(values) for key, values in timings.items()}}
    finally:
        dist.destroy_process_group()


def collective_ms(names: list[str], repeats: int) -> dict[str, Any]:
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_collectives, args=(port, names, repeats, out), nprocs=2)
        return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(STEPS))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results: dict[str, dict[str, list[float]]] = {}
    for name in args.models:
        plain, ghost = [], []
        for _ in range(args.rounds):  # alternating, so a busy spell on the machine hits both
            plain.append(steps_per_s(name, None, args.batch, STEPS[name]))
            ghost.append(steps_per_s(name, args.group, args.batch, STEPS[name]))
        results[name] = {"plain_steps_per_s": plain, "ghost_steps_per_s": ghost,
                         "ratios": [g / p for p, g in zip(plain, ghost)]}
        print(f"{name}: ghost/plain step rate, median {statistics.median(results[name]['ratios']):.3f}")
    collectives = collective_ms(args.models, repeats=50)
    summary = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "batch": args.batch, "group": args.group,
               "rounds": args.rounds, "steps": STEPS, "load_average_before": load_before,
               "load_average_after": os.getloadavg()[0], "models": results, "collectives_ms": collectives}
    save("ghost_bn", summary, markdown(summary, args))


def markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    rows = []
    for name, result in summary["models"].items():
        for i, (p, g) in enumerate(zip(result["plain_steps_per_s"], result["ghost_steps_per_s"])):
            rows.append(f"| {name} | {i + 1} | {p:.3f} | {g:.3f} | {g / p:.3f} |")
    medians = "; ".join(f"{name} **{statistics.median(r['ratios']):.3f}** (step time "
                        f"{100 * (1 / statistics.median(r['ratios']) - 1):+.0f} %)"
                        for name, r in summary["models"].items())
    steps = ", ".join(f"{name} {summary['steps'][name]}" for name in summary["models"])
    comm = "\n".join(f"| {name} | {c['floats']:,} | {c['all_reduce']:.2f} | {c['broadcast']:.2f} |"
                     for name, c in summary["collectives_ms"].items())
    return (
        f"# Ghost batch norm: cost per training step on the CPU\n\nMachine: {summary['machine']}; {summary['date']}; "
        f"load average {summary['load_average_before']:.1f} before, {summary['load_average_after']:.1f} after (other "
        f"jobs may share the cores). `python bench/ghost_bn.py --batch {args.batch} --group {args.group} --rounds "
        f"{args.rounds}`: one process, forward + backward + SGD step on random 32x32 images, BatchNorm2d and "
        f"model.bn_group_size={args.group} alternating, after one warm-up step, timed steps per round and variant: "
        f"{steps}.\n\n"
        f"| model | round | BatchNorm2d steps/s | ghost steps/s | ratio |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nMedian ratio (ghost / plain step rate): {medians}.\n\n"
        f"## Collectives on 2 gloo processes (median of 50, ms)\n\nThe option adds one all-reduce of every "
        f"BatchNorm layer's running mean and variance, flattened, per optimizer step; it turns off DDP's broadcast "
        f"of rank 0's buffers before every forward (the same floats and the batch counters, coalesced as DDP "
        f"does).\n\n| model | floats all-reduced | all-reduce | broadcast of the buffers |\n"
        f"|---|---|---|---|\n{comm}\n")


if __name__ == "__main__":
    main()
