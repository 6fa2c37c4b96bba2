"""Optimizer, learning-rate schedule and evaluation: the pieces the train loop calls."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR
from torch.utils.data import DataLoader

from cifarlab.config import OptimConfig
from cifarlab.metrics import EvalResult


def build_optimizer(config: OptimConfig, model: nn.Module) -> Optimizer:
    return SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
               weight_decay=config.weight_decay)


def build_scheduler(config: OptimConfig, optimizer: Optimizer, epochs: int, steps_per_epoch: int) -> LRScheduler:
    """A schedule over ``epochs * steps_per_epoch`` optimizer steps (not batches: gradient
    accumulation takes several batches per step)."""
    total = epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "onecycle":
        # Momentum stays at optim.momentum: OneCycleLR would otherwise cycle it between 0.85 and 0.95.
        rise = warmup / total if warmup else 0.25
        return OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=rise, cycle_momentum=False)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, accelerator: Accelerator, classes: tuple[str, ...]) -> EvalResult:
    """Accuracy, per-class accuracy and loss over the whole test set, every image counted once."""
    model.eval()
    preds, labels, losses = [], [], []
    for images, targets in loader:
        logits = model(images)
        loss = F.cross_entropy(logits.float(), targets, reduction="none")
        # Gathered on every batch through to the end, so the last batch's padding is dropped.
        pred, target, loss = accelerator.gather_for_metrics((logits.argmax(dim=1), targets, loss))
        preds.append(pred)
        labels.append(target)
        losses.append(loss)
    model.train()
    return EvalResult.from_predictions(torch.cat(preds), torch.cat(labels), torch.cat(losses), classes)
