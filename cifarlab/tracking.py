"""Experiment records: W&B through Accelerate's tracker API, and metrics.jsonl on disk.

Both are written by the main process only (Accelerate's ``log`` is a no-op elsewhere;
``MetricsFile`` checks itself). metrics.jsonl is the local record that survives without W&B.
"""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from typing import Any, Optional

from accelerate import Accelerator

from cifarlab.config import WandbConfig


def wandb_mode(config: WandbConfig) -> Optional[str]:
    """The W&B mode to run in, or None for no W&B at all."""
    if config.mode == "disabled":
        return None
    if config.mode != "auto":
        return config.mode
    return "online" if _has_wandb_credentials() else "offline"


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def start_tracking(accelerator: Accelerator, config: WandbConfig, run_dir: Path, run_name: str,
                   run_id: str, run_config: dict[str, Any]) -> None:
    """Start (or, with the same ``run_id``, continue) the W&B run whose files live in ``run_dir``.

    Test metrics are charted against ``train/epoch`` (logged with them), training ones against the step.
    """
    mode = wandb_mode(config)
    if mode is None:
        return
    accelerator.init_trackers(
        config.project,
        config=run_config,
        init_kwargs={
            "wandb": {
                "mode": mode,
                "dir": str(run_dir),
                "id": run_id,
                "resume": "allow",
                "name": config.name or run_name,
                "entity": config.entity,
                "group": config.group,
                "tags": list(config.tags) or None,
                "notes": config.notes,
            }
        },
    )
    run = wandb_run(accelerator)
    if run is not None:
        run.define_metric("train/epoch")
        run.define_metric("test/*", step_metric="train/epoch")


def wandb_run(accelerator: Accelerator) -> Any:
    """The live W&B run on the main process, else None."""
    if not accelerator.is_main_process or not any(t.name == "wandb" for t in accelerator.trackers):
        return None
    return accelerator.get_tracker("wandb", unwrap=True)


def log_images(step_log: "StepLog", key: str, image: Any, caption: str, step: int) -> None:
    """A PIL image as W&B media (main process; call only when :func:`wandb_run` is not None)."""
    import wandb  # only once W&B is in use

    step_log.log({key: wandb.Image(image, caption=caption)}, step=step)


def log_confusion(step_log: "StepLog", confusion: list[list[int]], classes: tuple[str, ...], step: int) -> None:
    """W&B's interactive confusion matrix, from counts (rows: true class, columns: predicted)."""
    import wandb

    truth = [i for i, row in enumerate(confusion) for j, count in enumerate(row) for _ in range(count)]
    predicted = [j for row in confusion for j, count in enumerate(row) for _ in range(count)]
    chart = wandb.plot.confusion_matrix(y_true=truth, preds=predicted, class_names=list(classes),
                                        title="test confusion matrix")
    step_log.log({"test/confusion_matrix": chart}, step=step)


class StepLog:
    """``accelerator.log`` that never goes back in steps within a W&B run.

    W&B drops points logged at a step lower than one it already has. After a resume the run
    redoes the steps since its checkpoint, which it had logged before it was stopped; those are
    skipped (an exact resume recomputes the same values). The highest step logged is kept in
    ``wandb_step`` in the run directory, written by the main process.
    """

    def __init__(self, accelerator: Accelerator, run_dir: Path, continuing: bool) -> None:
        self.accelerator = accelerator
        self.path = run_dir / "wandb_step"
        self.last = int(self.path.read_text()) if continuing and self.path.is_file() else -1

    def log(self, values: dict[str, Any], step: int) -> None:
        if step < self.last:
            return
        self.accelerator.log(values, step=step)
        if step > self.last and self.accelerator.is_main_process:
            self.path.write_text(str(step))
        self.last = step


class MetricsFile:
    """Appends one JSON object per evaluation to ``metrics.jsonl`` (main process only)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def truncate_after(self, global_step: int) -> None:
        """Drop records past ``global_step``: on resume they belong to progress that was lost."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["global_step"] <= global_step]
        tmp = self.path.with_name(f".tmp-{self.path.name}")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, self.path)

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
