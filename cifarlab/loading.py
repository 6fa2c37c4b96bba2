"""Load a trained model for evaluation or prediction, safely (safetensors only, no pickle).

A checkpoint argument may be a run's final ``model.safetensors``, a run directory, or a checkpoint
folder (``<run>/checkpoints/step_N`` or ``<run>/checkpoints/best``). The run's ``config.yaml`` and
``classes.json`` are found next to it unless ``--config`` says otherwise. A checkpoint folder of a run
with ``train.ema`` holds the average in ``ema.safetensors``: that is what the run evaluated (and what
its final ``model.safetensors`` holds), so it is loaded instead of the raw weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from cifarlab.config import CIFAR10_CLASSES, Config, load_config
from cifarlab.errors import UsageError
from cifarlab.models import build_model

CLASSES_FILE = "classes.json"
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"


@dataclass
class Trained:
    config: Config
    model: nn.Module
    classes: tuple[str, ...]
    weights: Path


def _locate(checkpoint: str) -> tuple[Path, Path]:
    """(weights file, run directory) for a checkpoint argument."""
    path = Path(checkpoint)
    if path.is_file():
        weights = path
    elif (path / EMA_FILE).is_file():
        weights = path / EMA_FILE
    elif (path / WEIGHTS_FILE).is_file():
        weights = path / WEIGHTS_FILE
    else:
        raise UsageError(f"--checkpoint {checkpoint}: no {WEIGHTS_FILE} there; pass a run directory, its "
                         f"{WEIGHTS_FILE}, or a folder under <run>/checkpoints/")
    folder = weights.parent
    run_dir = folder.parent.parent if folder.parent.name == "checkpoints" else folder
    return weights, run_dir


def load_trained(checkpoint: str, config_file: Optional[str] = None, overrides: Sequence[str] = ()) -> Trained:
    weights, run_dir = _locate(checkpoint)
    if config_file is None:
        if not (run_dir / "config.yaml").is_file():
            raise UsageError(f"--checkpoint {checkpoint}: no config.yaml in its run directory {run_dir}; "
                             f"pass --config FILE.yaml with the config it was trained with")
        config_file = str(run_dir / "config.yaml")
    config = load_config(config_file, list(overrides))
    classes_file = run_dir / CLASSES_FILE
    classes = tuple(json.loads(classes_file.read_text())) if classes_file.is_file() else CIFAR10_CLASSES
    model = build_model(config.model, num_classes=len(classes))
    try:
        state = load_file(str(weights))
        if weights.name == EMA_FILE:  # torch's AveragedModel: the model under module., plus a step count
            state = {key.removeprefix("module."): value for key, value in state.items() if key != "n_averaged"}
    except (SafetensorError, OSError) as error:
        raise UsageError(f"--checkpoint {checkpoint}: {weights} is not a readable safetensors file ({error})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # a tensor of the wrong shape
        missing, unexpected = ["?"], ["?"]
    if missing or unexpected:
        raise UsageError(f"--checkpoint {checkpoint}: its weights do not fit model.name={config.model.name} "
                         f"(missing or mismatched tensors); pass the --config it "
                         f"was trained with")
    model.eval()
    return Trained(config=config, model=model, classes=classes, weights=weights)
