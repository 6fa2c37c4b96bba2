"""What every benchmark script shares: the machine it ran on, the trainer's command line, its evaluation
records (read from the run's metrics.jsonl, never from console text), and where results go
(bench/results/<name>.json and .md)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


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


def evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluation records (those with ``test/acc``) of ``run_dir``'s metrics.jsonl, in order; [] when it has
    none (cifarlab.analysis.results reads them). Names as in W&B: train/epoch, test/acc (a fraction),
    train/epoch_images_per_s, train/epoch_seconds, ...; ``time`` is unix seconds when the record was written."""
    from cifarlab.analysis.results import evaluations as read

    return read(Path(run_dir))


def timed_epochs(command: Sequence[str], run_dir: Path,
                 log: Optional[Path] = None) -> tuple[list[dict[str, float]], float]:
    """Run ``command`` (whose train.output_dir/train.run_name is ``run_dir``) from a cold start; return each
    evaluation record it wrote to ``run_dir``/metrics.jsonl (epoch, seconds since launch to the record's time,
    training images/s, test accuracy in %) and the total wall seconds. Fails on a non-zero exit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    start, clock = time.time(), time.perf_counter()
    process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env,
                             check=False)
    wall = time.perf_counter() - clock
    if log is not None:
        log.write_text(process.stdout)
    if process.returncode != 0:
        tail = "".join(process.stdout.splitlines(keepends=True)[-20:])
        sys.exit(f"{' '.join(command)} failed with exit {process.returncode}:\n{tail}")
    # Records from this launch only (a reused run directory keeps an earlier run's).
    epochs = [{"epoch": int(r["train/epoch"]), "seconds": r["time"] - start,
               "images_per_s": r["train/epoch_images_per_s"], "accuracy": 100 * r["test/acc"]}
              for r in evaluations(run_dir) if r["time"] >= start]
    if not epochs:
        sys.exit(f"{' '.join(command)} wrote no evaluation record to {Path(run_dir) / 'metrics.jsonl'}")
    return epochs, wall


def save(name: str, summary: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(f"-> {RESULTS.relative_to(REPO) / name}.md")
