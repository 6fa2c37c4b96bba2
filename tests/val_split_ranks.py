"""The validation split as the trainer's data path serves it, on as many gloo processes as this is launched with
(``accelerate launch --multi_gpu --num_processes 2 tests/val_split_ranks.py``): the main process prints one JSON line,
the process count and :func:`seen` of both data paths. tests/test_validation.py compares it with one process's, taken
in its own process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from cifarlab.config import Config, load_config
from cifarlab.data import build_data
from cifarlab.run import engine

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
OPTIONS = ("data.train_size=40", "data.test_size=6", "data.val_size=10", "data.val_seed=7", "data.augment=flip_crop",
           "train.batch_size=8", "train.eval_batch_size=4")
"""40 training images in 5 batches of 8, 10 held out (4 validation batches a process would split unevenly: 4, 4, 2)."""
LOADERS = ("tensor", "torchvision")


def config(loader: str) -> Config:
    return load_config(SMOKE, [*OPTIONS, f"data.loader={loader}"])


def seen(accelerator: Accelerator, loader: str) -> dict[str, Any]:
    """What the processes were served together, gathered in order: the held-out indices, the validation images'
    labels and a digest of the images themselves (as the model gets them: normalised, never augmented), the labels of
    each training batch of epochs 0 and 1."""
    chosen = config(loader)
    data = build_data(chosen.data, chosen.train.seed, engine.data_first(accelerator), device=accelerator.device)
    data.prepare(accelerator, chosen.train.batch_size, chosen.train.eval_batch_size)
    gathered = [accelerator.gather_for_metrics(batch) for batch in data.val_batches()]
    images = torch.cat([images for images, _ in gathered]).cpu()
    return {"held_out": list(data.held_out() or []),
            "val_labels": torch.cat([labels for _, labels in gathered]).tolist(),
            "val_images": hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16],
            "train_labels": [[accelerator.gather(labels).tolist() for _, labels in data.train_batches(epoch)]
                             for epoch in (0, 1)]}


def main() -> None:
    accelerator = engine.build_accelerator(config(LOADERS[0]))
    found = {loader: seen(accelerator, loader) for loader in LOADERS}
    if accelerator.is_main_process:
        print(json.dumps({"processes": accelerator.num_processes, "seen": found}))
    engine.leave(accelerator)


if __name__ == "__main__":
    main()
