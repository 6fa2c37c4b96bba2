"""Weights & Biases through Accelerate's tracker API: which mode, starting or continuing a run, media.

Everything here runs on the main process only (Accelerate's ``log`` is a no-op elsewhere). wandb itself
is imported only when a run uses it. :mod:`cifarlab.run.recorder` decides what is logged.
"""

from __future__ import annotations

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
                # W&B's banner and its history/summary at exit stay off the console: cifarlab prints one
                # line on where the files are. (Its offline banner ignores `quiet`: only `silent` stops it.)
                "settings": _silent_settings(),
            }
        },
    )
    run = wandb_run(accelerator)
    if run is not None:
        run.define_metric("train/epoch")
        run.define_metric("test/*", step_metric="train/epoch")


def _silent_settings() -> Any:
    import wandb

    return wandb.Settings(silent=True)


def finish(accelerator: Accelerator, exit_code: int) -> None:
    """Finish the W&B run with ``exit_code`` (a failed or stopped run), before ``end_training`` would finish it
    as a success."""
    run = wandb_run(accelerator)
    if run is not None:
        run.finish(exit_code=exit_code)


def where(run: Any) -> str:
    """One line on where a W&B run lives and how to upload it."""
    if run.offline:
        folder = Path(run.dir).parent  # run.dir is the run's files/ folder
        return f"W&B run files in {folder}; upload them with `wandb sync {folder}`"
    return f"W&B run {run.url}"


def wandb_run(accelerator: Accelerator) -> Any:
    """The live W&B run on the main process, else None."""
    if not accelerator.is_main_process or not any(t.name == "wandb" for t in accelerator.trackers):
        return None
    return accelerator.get_tracker("wandb", unwrap=True)


def log_model(run: Any, name: str, weights: Path, extra: list[Path], aliases: list[str],
              metadata: dict[str, Any]) -> None:
    """Log ``weights`` (as model.safetensors) and ``extra`` files as a version of model artifact ``name``.
    Offline the artifact is recorded in the run files and uploaded by `wandb sync`."""
    import wandb

    artifact = wandb.Artifact(name, type="model", metadata=metadata)
    artifact.add_file(str(weights), name="model.safetensors")
    for file in extra:
        artifact.add_file(str(file))
    run.log_artifact(artifact, aliases=aliases)


def image(picture: Any, caption: str) -> Any:
    """A PIL image as W&B media (call only when W&B is in use)."""
    import wandb

    return wandb.Image(picture, caption=caption)


def confusion_chart(confusion: list[list[int]], classes: tuple[str, ...]) -> Any:
    """W&B's interactive confusion matrix, from counts (rows: true class, columns: predicted)."""
    import wandb

    truth = [i for i, row in enumerate(confusion) for j, count in enumerate(row) for _ in range(count)]
    predicted = [j for row in confusion for j, count in enumerate(row) for _ in range(count)]
    return wandb.plot.confusion_matrix(y_true=truth, preds=predicted, class_names=list(classes),
                                       title="test confusion matrix")
