"""What a stop check costs: ``Accelerator.check_trigger`` (a one-number all-reduce the host waits for) on two gloo
processes, against the step times it would be paid on; the basis of cifarlab.run.preemption's cadence.

    python bench/stop_check.py --repeats 2000

Each of 2 processes (one thread each, this machine's CPU) builds a real ``Accelerator(cpu=True)`` and times
``check_trigger`` (median and 99th percentile, ms), and a raw ``dist.all_reduce`` of one number for reference.
On a GPU the all-reduce itself is as cheap, but the ``.item()`` in it waits for every queued kernel: checking
each step would stop the host from queueing ahead, which is why the checks are spaced by time, not made per step.
Results go to bench/results/stop_check.{json,md}.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifarlab.run.preemption import CHECK_EVERY, CHECK_WITHIN_S, check_interval

from common import machine, save


def _rank(rank: int, port: int, repeats: int, out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    timings: dict[str, list[float]] = {"check_trigger": [], "all_reduce": []}
    one = torch.zeros(1)
    for _ in range(repeats):
        accelerator.wait_for_everyone()
        start = time.perf_counter()
        accelerator.check_trigger()
        timings["check_trigger"].append(time.perf_counter() - start)
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(one)
        timings["all_reduce"].append(time.perf_counter() - start)
    if rank == 0:
        for name, values in timings.items():
            values.sort()
            out[name] = {"median_ms": 1000 * statistics.median(values),
                         "p99_ms": 1000 * values[int(0.99 * (len(values) - 1))]}
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(port, args.repeats, out), nprocs=2)
        costs = dict(out)
    check_ms = costs["check_trigger"]["median_ms"]
    # Per step: checking every step, every CHECK_EVERY steps, and at the cadence for steps of these lengths.
    cadence = []
    for step_s in (0.01, 0.05, 0.2, 1.0, 5.0):
        every = check_interval(step_s)
        cadence.append({"step_s": step_s, "check_every": every, "latency_s": every * step_s,
                        "overhead_every_step_pct": 100 * check_ms / 1000 / step_s,
                        "overhead_fixed_pct": 100 * check_ms / 1000 / (CHECK_EVERY * step_s),
                        "overhead_cadence_pct": 100 * check_ms / 1000 / (every * step_s)})
    summary = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "processes": 2, "backend": "gloo",
               "repeats": args.repeats, "costs": costs, "check_within_s": CHECK_WITHIN_S, "cadence": cadence,
               "command": " ".join(["python", *sys.argv])}
    rows = "\n".join(f"| {c['step_s']:g} | {c['check_every']} | {c['latency_s']:.2f} | "
                     f"{c['overhead_every_step_pct']:.3f} | {c['overhead_fixed_pct']:.3f} | "
                     f"{c['overhead_cadence_pct']:.4f} |" for c in cadence)
    markdown = (
        f"# What a stop check costs\n\nMachine: {summary['machine']}; {summary['date']}; 2 gloo processes, one "
        f"thread each; {args.repeats} repeats. Command: `{summary['command']}`\n\n"
        f"| collective | median ms | 99th percentile ms |\n|---|---|---|\n"
        + "\n".join(f"| {name} | {c['median_ms']:.3f} | {c['p99_ms']:.3f} |" for name, c in costs.items())
        + f"\n\nThe cadence (`cifarlab.run.preemption.check_interval`, {CHECK_WITHIN_S:g} s between checks) and what "
        f"the checks cost per step at the median, on steps of these lengths (CPU cost only: on a GPU each check "
        f"also drains the queue of kernels the host had run ahead with):\n\n"
        f"| step s | check every | worst wait s | every step % | every {CHECK_EVERY} steps % | cadence % |\n"
        f"|---|---|---|---|---|---|\n{rows}\n")
    save("stop_check", summary, markdown)


if __name__ == "__main__":
    main()
