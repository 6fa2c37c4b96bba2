"""Schedules, metrics, test-time augmentation and the weight average."""

from __future__ import annotations

import itertools
import math
import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from cifarlab.config import OptimConfig, load_config
from cifarlab.errors import UsageError
from cifarlab.report.metrics import EvalResult
from cifarlab.run import engine
from cifarlab.run.engine import build_ema, build_optimizer, build_scheduler, tta_logits

from conftest import CONFIGS

pytestmark = pytest.mark.unit


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
    assert all(a >= b for a, b in itertools.pairwise(warm[10:]))
    cycle = _lrs(OptimConfig(lr=0.1, schedule="onecycle"))
    assert max(cycle) == pytest.approx(0.1) and cycle.index(max(cycle)) == 9  # rises over the first 25 %
    assert cycle[0] < 0.01 and cycle[-1] < 1e-4


def test_adamw_is_torchs_with_its_default_betas_and_ignores_sgds_momentum() -> None:
    optimizer = build_optimizer(OptimConfig(name="adamw", lr=0.003, weight_decay=0.05), torch.nn.Linear(2, 2))
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (0.003, 0.05, (0.9, 0.999), 1e-8)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("schedule", ["none", "cosine", "onecycle"])
def test_a_warm_up_rises_from_near_0_to_the_rate_then_the_schedule_goes_on(name: str, schedule: str) -> None:
    lrs = _lrs(OptimConfig(name=name, lr=0.1, schedule=schedule, warmup_epochs=1.5))  # 15 of 40 steps
    assert lrs[0] <= 0.1 * 0.1 and all(a < b for a, b in itertools.pairwise(lrs[:15]))
    assert max(lrs) == pytest.approx(0.1) and lrs[14] == pytest.approx(0.1)
    after = lrs[14:]
    if schedule == "none":
        assert all(lr == pytest.approx(0.1) for lr in after)
    else:
        assert all(a >= b for a, b in itertools.pairwise(after)) and after[-1] < 0.001
    # A warm-up shorter than a step is its shortest, never onecycle's 25 % (which warmup_epochs=0 asks for).
    short = _lrs(OptimConfig(name=name, lr=0.1, schedule=schedule, warmup_epochs=0.01))
    assert short.index(max(short)) <= 1


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
    assert result.values() == {"test/acc": result.accuracy, "test/loss": 0.5, "test/images": 6, "test/acc/cat": 2 / 3,
                               "test/acc/dog": 2 / 3, "test/acc/frog": result.per_class["frog"]}


class _Probe(torch.nn.Module):
    """Logits that reveal which view they saw: the mean of the left half and of the top row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, :, :16].mean(dim=(1, 2)), x[:, 0, 0, :].mean(dim=1)], dim=1)


def test_tta_averages_the_mirror_image_and_one_pixel_shifts() -> None:
    images = torch.rand(3, 3, 32, 32)
    probe = _Probe()
    assert torch.equal(tta_logits(probe, images, "none"), probe(images))
    torch.testing.assert_close(tta_logits(probe, images, "flip"), (probe(images) + probe(images.flip(3))) / 2)
    views = [images, images.flip(3)]
    down = [torch.nn.functional.pad(v, (1, 0, 1, 0))[:, :, :32, :32] for v in views]  # content moved down-right
    up = [torch.nn.functional.pad(v, (0, 1, 0, 1))[:, :, 1:, 1:] for v in views]  # content moved up-left
    expected = torch.stack([probe(v) for v in views + up + down]).mean(dim=0)
    torch.testing.assert_close(tta_logits(probe, images, "flip_translate"), expected)


def test_ema_follows_the_weights_with_the_configured_decay() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = build_ema(model, 0.9, torch.device("cpu"))
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update_parameters(model)  # the first update copies the weights
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module[0].weight, 0.9 * (start + 1) + 0.1 * (start + 2))
    model(torch.randn(8, 2))  # BatchNorm statistics are averaged as well
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module[1].running_mean, 0.1 * model[1].running_mean)


def test_onecycle_works_for_short_runs_and_refuses_too_short_ones() -> None:
    for steps in (3, 4, 5):  # 25 % of 4 steps once made OneCycleLR divide by zero
        lrs = _lrs(OptimConfig(lr=0.1, schedule="onecycle"), epochs=1, steps=steps)
        assert max(lrs) == pytest.approx(0.1) and all(math.isfinite(lr) for lr in lrs)
    with pytest.raises(UsageError, match="optim.schedule=onecycle needs at least 3 optimizer steps"):
        _lrs(OptimConfig(lr=0.1, schedule="onecycle"), epochs=1, steps=2)


def test_the_weight_average_is_torchs_averaged_model_without_reading_its_count_back() -> None:
    """Same state-dict keys and bitwise the same numbers as AveragedModel with get_ema_multi_avg_fn; a loaded
    state continues with its count."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    mine = build_ema(model, 0.9, torch.device("cpu"))
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(4, 3, 6, 6)).square().mean().backward()
        optimizer.step()
        mine.update_parameters(model)
        theirs.update_parameters(model)
    assert list(mine.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(mine.state_dict()[key], value), key
    resumed = build_ema(model, 0.9, torch.device("cpu"))
    resumed.load_state_dict(theirs.state_dict())
    assert resumed.count == 3
    resumed.update_parameters(model)
    theirs.update_parameters(model)
    for key, value in theirs.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_the_weight_average_takes_the_mean_of_its_buffers_over_ranks() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = build_ema(model, 0.9, torch.device("cpu"))
    weight = ema.module[0].weight.clone()
    ema.sync_buffers(lambda flat: flat + 1)  # a stand-in for the mean over ranks
    torch.testing.assert_close(ema.module[1].running_mean, torch.ones(2))
    torch.testing.assert_close(ema.module[1].running_var, torch.full((2,), 2.0))
    assert int(ema.module[1].num_batches_tracked) == 0 and torch.equal(ema.module[0].weight, weight)


@pytest.fixture
def torch_switches(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """torch's global switches as they were, after the test."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved[:4]
    torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def test_cuda_autotunes_convolutions_unless_deterministic(torch_switches: None) -> None:
    torch.backends.cudnn.benchmark = False
    engine.backend_switches("cpu", deterministic=False)
    assert not torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    engine.backend_switches("cuda", deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ

    engine.backend_switches("cuda", deterministic=True)
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_deterministic_and_the_process_group_timeout_reach_torch_and_accelerate(torch_switches: None,
                                                                                 tmp_path: Path) -> None:
    config = load_config(str(CONFIGS / "smoke.yaml"), ["train.deterministic=true", "train.timeout_minutes=7",
                                                       f"train.output_dir={tmp_path}"])
    accelerator = engine.build_accelerator(config)
    assert accelerator.init_handler is not None and accelerator.init_handler.timeout == timedelta(minutes=7)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert engine.build_accelerator(load_config(str(CONFIGS / "smoke.yaml"))).init_handler is None  # torch's default

