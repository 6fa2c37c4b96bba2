"""What every benchmark script shares: the machine it ran on, the trainer's command line, and where
results go (bench/results/<name>.json and .md)."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# "[   20.2s] epoch 3: train loss 1.3722, 9,206 images/s over 5.4s; test accuracy 57.31 %"
EPOCH_LINE = re.compile(r"epoch (\d+): train loss [\d.]+, ([\d,]+) images/s over [\d.]+s; test accuracy ([\d.]+) %")


def cpu_model() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor())


def machine() -> str:
    """CPU model, cores, torch version and threads, Python: enough to compare figures across runs."""
    import torch

    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), " \
           f"Python {platform.python_version()}"


def launch(args: Sequence[str], module: str = "cifarlab.train") -> list[str]:
    """``accelerate launch`` with one process, as a user types it (the launcher's own start-up included)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", module, *args]


def timed_epochs(command: Sequence[str], log: Optional[Path] = None) -> tuple[list[dict[str, float]], float]:
    """Run ``command`` from a cold start; return each printed epoch (seconds since start, images/s,
    accuracy in %) and the total wall seconds. Fails on a non-zero exit."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    epochs, lines = [], []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        found = EPOCH_LINE.search(line)
        if found:
            epochs.append({"epoch": int(found[1]), "seconds": time.perf_counter() - start,
                           "images_per_s": float(found[2].replace(",", "")), "accuracy": float(found[3])})
    wall = time.perf_counter() - start
    if log is not None:
        log.write_text("".join(lines))
    if process.wait() != 0:
        sys.exit(f"{' '.join(command)} failed with exit {process.returncode}:\n{''.join(lines[-20:])}")
    return epochs, wall


def save(name: str, summary: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(f"-> {RESULTS.relative_to(REPO) / name}.md")
