"""Schedules and metrics."""

from __future__ import annotations

import math

import pytest
import torch

from cifarlab.config import OptimConfig
from cifarlab.engine import build_optimizer, build_scheduler
from cifarlab.metrics import EvalResult


def _lrs(config: OptimConfig, epochs: int = 4, steps: int = 10) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, epochs, steps)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_schedules() -> None:
    assert set(_lrs(OptimConfig(lr=0.1, schedule="none"))) == {0.1}
    warm = _lrs(OptimConfig(lr=0.1, schedule="cosine", warmup_epochs=1))
    assert warm[0] == pytest.approx(0.01) and warm[9] == pytest.approx(0.1)
    assert warm[10] == pytest.approx(0.1) and warm[-1] < 0.001
    assert all(a >= b for a, b in zip(warm[10:], warm[11:]))
    cycle = _lrs(OptimConfig(lr=0.1, schedule="onecycle"))
    assert max(cycle) == pytest.approx(0.1) and cycle.index(max(cycle)) == 9  # rises over the first 25 %
    assert cycle[0] < 0.01 and cycle[-1] < 1e-4


def test_onecycle_keeps_the_configured_momentum() -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(OptimConfig(momentum=0.8, schedule="onecycle"), model)
    build_scheduler(OptimConfig(momentum=0.8, schedule="onecycle"), optimizer, 2, 5)
    assert optimizer.param_groups[0]["momentum"] == 0.8


def test_eval_result_counts_per_class() -> None:
    classes = ("cat", "dog", "frog")
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    preds = torch.tensor([0, 1, 1, 1, 0, 0])
    result = EvalResult.from_predictions(preds, labels, torch.full((6,), 0.5), classes)
    assert result.count == 6
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.per_class["cat"] == pytest.approx(2 / 3) and result.per_class["dog"] == pytest.approx(2 / 3)
    assert math.isnan(result.per_class["frog"]) and result.per_class_count["frog"] == 0
    assert result.loss == pytest.approx(0.5)
    assert result.confusion == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]  # rows: true class, columns: predicted
    assert set(result.wandb_values()) == {"test/acc", "test/loss", "test/acc/cat", "test/acc/dog", "test/acc/frog"}
