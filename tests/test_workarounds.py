"""cifarlab.workarounds: they apply only to the Accelerate they were checked against, that Accelerate still
looks as they assume, and the bypassed zero_grad does what the public one does."""

from __future__ import annotations

import inspect

import accelerate
import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer

from cifarlab import workarounds

pytestmark = pytest.mark.unit


def test_installed_accelerate_is_the_one_the_workarounds_were_checked_against() -> None:
    assert workarounds.ACTIVE, (
        f"accelerate {accelerate.__version__} is not in cifarlab.workarounds.TESTED {workarounds.TESTED}: re-read "
        f"AcceleratedOptimizer.step and zero_grad, re-measure with bench/workarounds.py, then update TESTED")
    step = inspect.getsource(AcceleratedOptimizer.step)
    assert "is_lomo_available()" in step, "AcceleratedOptimizer.step no longer checks for lomo: drop workaround 1"
    zero_grad = inspect.getsource(AcceleratedOptimizer.zero_grad)
    assert "inspect.signature" in zero_grad and "sync_gradients" in zero_grad, "zero_grad changed: re-check 2."


def test_the_package_check_is_cached_and_zero_grad_matches_the_public_one() -> None:
    workarounds.apply()
    workarounds.apply()
    import accelerate.optimizer

    assert hasattr(accelerate.optimizer.is_lomo_available, "cache_info")
    assert accelerate.optimizer.is_lomo_available() is accelerate.utils.is_lomo_available()

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = torch.nn.Linear(2, 1)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for sync, kept in ((False, True), (True, False)):  # mid-accumulation: gradients kept; at its end: cleared
        model(torch.ones(1, 2)).sum().backward()
        accelerator.gradient_state._set_sync_gradients(sync)
        workarounds.zero_grad(optimizer, accelerator)
        assert (model.weight.grad is not None) == kept
