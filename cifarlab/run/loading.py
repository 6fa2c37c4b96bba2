"""Load a trained model for evaluation or prediction, safely (safetensors only, no pickle).

A checkpoint argument may be a run's final ``model.safetensors``, a run directory, or a checkpoint
folder (``<run>/checkpoints/step_N`` or ``<run>/checkpoints/best``). The run's ``config.yaml`` and
``classes.json`` are found next to it unless ``--config`` says otherwise. A checkpoint folder of a run
with ``train.ema`` holds the average in ``ema.safetensors``: that is what the run evaluated (and what
its final ``model.safetensors`` holds), so it is loaded instead of the raw weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from cifarlab.config import Config, load_config
from cifarlab.data.classes import config_classes
from cifarlab.errors import UsageError
from cifarlab.files import typed
from cifarlab.models import build_model
from cifarlab.run import versions
from cifarlab.run.rundir import EMA_WEIGHTS, WEIGHTS, RunDir, of_checkpoint


@dataclass
class Trained:
    config: Config
    model: nn.Module
    classes: tuple[str, ...]
    weights: Path


def _locate(checkpoint: str) -> tuple[Path, RunDir]:
    """(weights file, run directory) for a checkpoint argument."""
    path = Path(checkpoint)
    weights = path if path.is_file() else evaluated_weights(path)
    if not weights.is_file():
        raise UsageError(f"--checkpoint {checkpoint}: no {WEIGHTS} there; pass a run directory, its "
                         f"{WEIGHTS}, or a folder under <run>/checkpoints/")
    return weights, of_checkpoint(weights.parent) or RunDir(weights.parent)


def model_weights(weights: Path) -> dict[str, torch.Tensor]:
    """The model's state dict from a weights file: a model's own, or ``ema.safetensors`` (the weight
    average, keyed as torch's AveragedModel: the model under ``module.``, plus a step count ``n_averaged``)."""
    state = load_file(str(weights))
    if weights.name == EMA_WEIGHTS:
        state = {key.removeprefix("module."): value for key, value in state.items() if key != "n_averaged"}
    return state


def evaluated_weights(folder: Path) -> Path:
    """The weights file a checkpoint folder's run evaluated: the average with train.ema, else the model."""
    return folder / EMA_WEIGHTS if (folder / EMA_WEIGHTS).is_file() else folder / WEIGHTS


def load_trained(checkpoint: str, config_file: Optional[str] = None, overrides: Sequence[str] = ()) -> Trained:
    versions.guard_torchvision()  # evaluate and predict read images with it: a mismatched pair in one line
    weights, run = _locate(checkpoint)
    if config_file is None:
        if not run.config.is_file():
            raise UsageError(f"--checkpoint {checkpoint}: no {run.config.name} in its run directory {typed(run.root)}; "
                             f"pass --config FILE.yaml with the config it was trained with")
        config_file = str(run.config)
    config = load_config(config_file, list(overrides))
    classes = tuple(json.loads(run.classes.read_text())) if run.classes.is_file() else config_classes(config.data)
    model = build_model(config.model, num_classes=len(classes))
    try:
        state = model_weights(weights)
    except (SafetensorError, OSError) as error:
        raise UsageError(f"--checkpoint {checkpoint}: {typed(weights)} is not a readable safetensors file ({error})"
                         ) from None
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
