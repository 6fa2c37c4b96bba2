"""cifarlab.run.workarounds: on whatever Accelerate is installed, a bypass that is on does what the public call does;
an Accelerate that no longer behaves as a bypass assumes turns it off, with one start-up note. No test here
names an Accelerate version."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import accelerate
import accelerate.optimizer
import accelerate.utils
import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer

from cifarlab.run import workarounds

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _probe_afresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test probes the Accelerate it sees; the module's cached answer and the package check come back after."""
    monkeypatch.setattr(workarounds, "_status", None)
    check = accelerate.optimizer.is_lomo_available
    monkeypatch.setattr(accelerate.optimizer, "is_lomo_available", getattr(check, "__wrapped__", check))
    yield


def gradients_after_zero_grad(bypass: bool) -> list[bool]:
    """Whether the weight still has a gradient after zero_grad, mid-accumulation and at its end."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = torch.nn.Linear(2, 1)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    kept = []
    for sync in (False, True):
        model(torch.ones(1, 2)).sum().backward()
        accelerator.gradient_state._set_sync_gradients(sync)
        if bypass:
            workarounds.zero_grad(optimizer, accelerator)
        else:
            optimizer.zero_grad()
        kept.append(model.weight.grad is not None)
    return kept


def test_each_bypass_that_is_on_does_what_the_public_call_does() -> None:
    accelerator = Accelerator(cpu=True)
    status = workarounds.apply()
    assert workarounds.apply() is status  # probed once per process
    print(f"accelerate {accelerate.__version__}: {status}")  # pytest -s shows which bypasses this version allows
    if status.package_check_cached:
        assert hasattr(accelerate.optimizer.is_lomo_available, "cache_info")
        assert accelerate.optimizer.is_lomo_available() is accelerate.utils.is_lomo_available()
    else:
        assert not hasattr(accelerate.optimizer.is_lomo_available, "cache_info")
    assert status.note() is None or "public API" in status.note()  # type: ignore[operator]
    del accelerator
    assert gradients_after_zero_grad(bypass=True) == gradients_after_zero_grad(bypass=False) == [True, False]


def changed_zero_grad(keeps_gradients: bool = False, marks_wrapper: bool = False) -> Any:
    """A zero_grad as a later Accelerate might write it."""
    def zero_grad(self: AcceleratedOptimizer, set_to_none: Any = None) -> None:
        if marks_wrapper:
            self.cleared_at_least_once = True
        if self.gradient_state.sync_gradients:
            self.optimizer.zero_grad(set_to_none=not keeps_gradients)
    return zero_grad


@pytest.mark.parametrize("change", [{"keeps_gradients": True}, {"marks_wrapper": True}])
def test_a_zero_grad_that_does_more_or_other_turns_the_bypass_off(monkeypatch: pytest.MonkeyPatch,
                                                                   change: dict[str, bool]) -> None:
    monkeypatch.setattr(AcceleratedOptimizer, "zero_grad", changed_zero_grad(**change))
    Accelerator(cpu=True)
    status = workarounds.apply()
    assert not status.zero_grad_bypassed
    note = status.note()
    assert note is not None and "zero_grad" in note and "public API" in note and "slower" in note
    assert "\n" not in note
    # Off means the public call: whatever the changed zero_grad does is what happens.
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 1)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    model(torch.ones(1, 2)).sum().backward()
    workarounds.zero_grad(optimizer, accelerator)
    assert getattr(optimizer, "cleared_at_least_once", False) == change.get("marks_wrapper", False)


def test_a_step_that_no_longer_looks_up_the_package_check_leaves_it_uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    def step(self: AcceleratedOptimizer, closure: Any = None) -> None:
        self.optimizer.step(closure)

    monkeypatch.setattr(AcceleratedOptimizer, "step", step)
    Accelerator(cpu=True)
    status = workarounds.apply()
    assert not status.package_check_cached
    assert not hasattr(accelerate.optimizer.is_lomo_available, "cache_info")
    assert "lomo_optim" in (status.note() or "")


def test_the_trainer_says_so_once_at_start_up(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from test_loop import parts, tiny_config

    monkeypatch.setattr(AcceleratedOptimizer, "zero_grad", changed_zero_grad(keeps_gradients=True))
    parts(tiny_config(tmp_path))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cifarlab: note:")]
    assert len(lines) == 1 and "zero_grad" in lines[0], lines
