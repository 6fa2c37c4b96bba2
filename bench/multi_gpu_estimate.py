"""ESTIMATE (not a measurement) of data-parallel scaling: training images/s on 1, 2, 4, 8 GPUs and 2 nodes x 8.

    python bench/multi_gpu_estimate.py                                   # gpu.json if present, else assumptions
    python bench/multi_gpu_estimate.py --step-time resnet18=0.0061@512 --batch 512

No multi-GPU machine was available, so every number is modelled, for each model in cifarlab.models.MODELS:
- compute per step on one GPU = max(host time, GPU time), since launches run ahead of the GPU. Host time = aten
  ops per step (counted here, foreach SGD as on CUDA) x an ASSUMED cost per op. GPU time: measured (--step-time,
  or bench/results/gpu.json from bench/gpu.py) and scaled linearly in images to other batches; else ASSUMED as
  FLOPs per step (FlopCounterMode on the real model) / an assumed sustained TFLOP/s.
- gradient all-reduce per step: trainable parameters x 4 bytes (DDP all-reduces the fp32 .grad even under bf16
  autocast) in DDP's buckets (1 MiB first, then 25 MiB); ring time = 2(N-1)/N x bytes / busbw + 2(N-1) x latency
  per bucket. Overlap: best case hides it behind backward (the backward share of FLOPs, about 2/3 of the step);
  worst case hides none of it.
cifarlab's train.batch_size is the GLOBAL batch (split_batches=True): strong scaling keeps it at B (per-GPU batch
B/N); weak scaling sets train.batch_size = B x N (per-GPU batch B). Left out (real runs will be slower): data
loading, evaluation, DDP's BatchNorm buffer broadcast, stragglers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from cifarlab.models import MODELS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cpu_model

GRAD_BYTES = 4  # fp32 gradients
FIRST_BUCKET, BUCKET = 1 << 20, 25 << 20  # torch DDP: _DEFAULT_FIRST_BUCKET_BYTES, bucket_cap_mb=25 (MiB)
# ASSUMPTIONS for the compute side (override with flags; replace with measurements via --step-time / gpu.json).
TFLOPS = 100.0  # sustained bf16 TFLOP/s on CIFAR-size convnets: ~10 % of H100 SXM's 989 dense bf16 (datasheet)
US_PER_OP = 8.0  # host microseconds per aten op in eager PyTorch (Python, dispatcher, kernel launch)


@dataclass(frozen=True)
class Link:
    name: str
    busbw_gb_s: float  # achieved all-reduce bus bandwidth per GPU, GB/s (1e9 bytes)
    latency_us: float  # per ring step
    source: str


_A = "ASSUMPTIONS: achieved busbw and latency"
NVLINK = Link("NVLink 4 / NVSwitch (H100 SXM)", 360.0, 6.0, f"peak 450 GB/s per direction (NVIDIA H100 "
              f"datasheet: 900 GB/s total); {_A} (80 % of peak)")
PCIE = Link("PCIe Gen5 x16 (H100 PCIe, no NVLink bridge)", 40.0, 10.0, f"peak 63 GB/s per direction (PCIe 5.0: "
            f"32 GT/s x 16 lanes); {_A} (through the host bridge)")
IB = Link("InfiniBand NDR, 8 x 400 Gb/s per node (DGX H100)", 320.0, 10.0, f"8 x 50 GB/s ConnectX-7 per node "
          f"(NVIDIA DGX H100 user guide), one ring per NIC; {_A} (80 % of peak)")
ETH = Link("Ethernet, 1 x 100 Gb/s per node", 10.0, 20.0, f"12.5 GB/s line rate; {_A} (80 % of peak)")
SETUPS = [("1 GPU", 1, NVLINK), ("1x2 NVLink", 2, NVLINK), ("1x4 NVLink", 4, NVLINK), ("1x8 NVLink", 8, NVLINK),
          ("1x2 PCIe", 2, PCIE), ("1x4 PCIe", 4, PCIE), ("1x8 PCIe", 8, PCIE),
          ("2x8 IB NDR", 16, IB), ("2x8 100GbE", 16, ETH)]  # (label, GPUs, the slowest link on the ring)


class OpCounter(TorchDispatchMode):
    """Counts aten ops: each is roughly one kernel launch on a GPU."""
    ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops += 1
        return func(*args, **(kwargs or {}))


def profile(name: str, batch: int = 2) -> dict[str, float]:
    """Parameters, buffer bytes, FLOPs per image (forward, backward) and aten ops per training step."""
    model = MODELS[name](num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                foreach=True)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as forward:
        loss = F.cross_entropy(model(x), y)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    optimizer.zero_grad()  # sets grads to None: no kernels
    with OpCounter() as ops:  # a whole second step: forward, backward, optimizer
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return {"params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()),
            "fwd_flops_per_image": forward.get_total_flops() / batch,
            "bwd_flops_per_image": backward.get_total_flops() / batch, "ops_per_step": ops.ops}


def allreduce_s(grad_bytes: int, gpus: int, link: Link) -> float:  # ring, per DDP bucket
    buckets = 1 if grad_bytes <= FIRST_BUCKET else 1 + math.ceil((grad_bytes - FIRST_BUCKET) / BUCKET)
    return (2 * (gpus - 1) / gpus * grad_bytes / (link.busbw_gb_s * 1e9)
            + buckets * 2 * (gpus - 1) * link.latency_us * 1e-6)


def measured_step_times(args: argparse.Namespace) -> dict[str, tuple[float, int, str]]:
    """{model: (seconds per step, per-GPU batch, where from)}; flags win over gpu.json."""
    path = Path(args.step_times)
    data = json.loads(path.read_text()) if path.exists() else {}
    if data.get("smoke") or data.get("device_type", "cuda") != "cuda":
        print(f"ignoring {path}: not a real GPU run (smoke or CPU)", file=sys.stderr)
        data = {}
    found = {model: (e["batch"] / e["images_per_s"], e["batch"], f"measured on {data['device']} ({path}, "
                     f"{e['mixed_precision']}, {e['source']})") for model, e in data.get("step_times", {}).items()}
    for spec in args.step_time:  # MODEL=SECONDS@BATCH
        model, seconds, batch = spec.replace("@", "=").split("=")
        found[model] = (float(seconds), int(batch), f"measured, --step-time {spec}")
    return found


def estimate(name: str, prof: dict[str, float], measured: tuple[float, int, str] | None,
             args: argparse.Namespace) -> dict[str, object]:
    host_s = prof["ops_per_step"] * args.us_per_op * 1e-6
    flops = prof["fwd_flops_per_image"] + prof["bwd_flops_per_image"]
    per_image, source = ((measured[0] / measured[1], measured[2]) if measured else
                         (flops / (args.tflops * 1e12), f"ASSUMED: {args.tflops:g} TFLOP/s, {args.us_per_op:g} us/op"))
    backward_share, grad_bytes = prof["bwd_flops_per_image"] / flops, int(prof["params"] * GRAD_BYTES)
    base = args.batch / max(host_s, per_image * args.batch)  # images/s on one GPU at per-GPU batch B
    rows = []
    for label, gpus, link in SETUPS:
        comm = allreduce_s(grad_bytes, gpus, link)
        row: dict[str, object] = {"setup": label, "gpus": gpus, "link": link.name, "allreduce_ms": comm * 1e3}
        for mode, per_gpu in (("strong", args.batch // gpus), ("weak", args.batch)):
            step = max(host_s, per_image * per_gpu)
            best = step + max(0.0, comm - backward_share * step)  # all-reduce hidden behind backward
            speeds = {"best": per_gpu * gpus / best, "worst": per_gpu * gpus / (step + comm)}
            row[mode] = {"per_gpu_batch": per_gpu, "global_batch": per_gpu * gpus,
                         **{f"images_per_s_{k}": v for k, v in speeds.items()},
                         **{f"efficiency_{k}": v / (gpus * base) for k, v in speeds.items()}}
        rows.append(row)
    return {"model": name, **prof, "grad_bytes": grad_bytes, "backward_share": backward_share,
            "host_s_per_step": host_s, "step_time_source": source, "rows": rows}


def markdown(results: list[dict], meta: dict[str, object]) -> str:
    def cells(d: dict[str, float]) -> str:  # images/s and efficiency, best - worst
        return (f"{d['images_per_s_best']:,.0f} - {d['images_per_s_worst']:,.0f} | "
                f"{d['efficiency_best']:.0%} - {d['efficiency_worst']:.0%}")
    lines = ["# Multi-GPU data-parallel scaling: ESTIMATE, not a measurement", "",
             f"No multi-GPU machine was available: every figure is modelled (see `bench/multi_gpu_estimate.py`). "
             f"FLOPs and op counts ran on {meta['machine']}; {meta['date']}. Command: `{meta['command']}`", "",
             f"B = {meta['batch']}. Strong scaling: `train.batch_size={meta['batch']}` fixed (global), per-GPU batch "
             f"B/N. Weak scaling: `train.batch_size=B x N`, per-GPU batch B. Images/s as best (all-reduce hidden "
             f"behind backward) - worst (no overlap); efficiency vs N x one GPU at batch B.", "", "Links:", ""]
    lines += [f"- {link.name}: busbw {link.busbw_gb_s:g} GB/s, {link.latency_us:g} us per ring step. {link.source}"
              for link in (NVLINK, PCIE, IB, ETH)]
    for r in results:
        lines += ["", f"## {r['model']}", "",
                  f"{r['params']:,} trainable parameters -> {r['grad_bytes'] / 2**20:.2f} MiB of fp32 gradients "
                  f"per step; {(r['fwd_flops_per_image'] + r['bwd_flops_per_image']) / 1e6:,.1f} MFLOP per training "
                  f"image (backward {100 * r['backward_share']:.0f} %); {r['ops_per_step']} aten ops per step "
                  f"(host floor {1e3 * r['host_s_per_step']:.2f} ms); BatchNorm buffers {r['buffer_bytes']:,} bytes. "
                  f"Step time: {r['step_time_source']}.", "",
                  "| setup | all-reduce ms | strong: per-GPU batch | strong images/s | strong eff. "
                  "| weak: global batch | weak images/s | weak eff. |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {row['setup']} | {row['allreduce_ms']:.3f} | {row['strong']['per_gpu_batch']} | "
                  f"{cells(row['strong'])} | {row['weak']['global_batch']} | {cells(row['weak'])} |"
                  for row in r["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512, help="B: global batch at 1 GPU (must divide by 16)")
    parser.add_argument("--step-times", default="bench/results/gpu.json", help="measured single-GPU figures")
    parser.add_argument("--step-time", action="append", default=[], metavar="MODEL=SECONDS@BATCH",
                        help="measured seconds per training step at that per-GPU batch (repeatable)")
    parser.add_argument("--tflops", type=float, default=TFLOPS, help="ASSUMED sustained TFLOP/s per GPU")
    parser.add_argument("--us-per-op", type=float, default=US_PER_OP, help="ASSUMED host microseconds per aten op")
    args = parser.parse_args()
    if args.batch % 16:
        parser.error(f"--batch {args.batch} must divide by 16 (the largest setup's GPU count)")
    os.chdir(REPO)
    measured = measured_step_times(args)
    results = [estimate(name, profile(name), measured.get(name), args) for name in MODELS]
    cpu = cpu_model()
    meta = {"kind": "ESTIMATE, not a measurement",
            "machine": f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d"), "command": shlex.join(["python", *sys.argv]), "batch": args.batch,
            "links": [vars(link) for link in (NVLINK, PCIE, IB, ETH)]}
    out = REPO / "bench" / "results"
    (out / "multi_gpu_estimate.json").write_text(json.dumps({**meta, "models": results}, indent=2) + "\n")
    (out / "multi_gpu_estimate.md").write_text(markdown(results, meta))
    print("ESTIMATE, 1x8 NVLink, best-case efficiency strong / weak: " + ", ".join(
        f"{r['model']} {r['rows'][3]['strong']['efficiency_best']:.0%} / {r['rows'][3]['weak']['efficiency_best']:.0%}"
        for r in results) + " -> bench/results/multi_gpu_estimate.md")


if __name__ == "__main__":
    main()
