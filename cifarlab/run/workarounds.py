"""Where cifarlab steps around Accelerate's public API, and why. Each bypass is guarded by the behaviour it
relies on, probed once per process against the installed Accelerate (:func:`apply`), never by a version
string: a new Accelerate release that changes that behaviour turns the bypass off, and the trainer says so
in one ``cifarlab: note:`` line at start-up, naming what was turned off and what it costs. Measured by
``bench/workarounds.py`` (results in bench/results/workarounds.md).

1. ``AcceleratedOptimizer.step`` (the public call) asks ``accelerate.utils.is_lomo_available()`` twice per
   call: an importlib search of sys.path for ``lomo_optim`` (about 0.1 ms each on a 2-core CPU). Installed
   packages do not change during a run, so the answer is cached (``functools.lru_cache`` on the name that
   ``accelerate.optimizer`` looks up). Relies on: ``step`` looks up the module-level name
   ``is_lomo_available`` when called (so replacing the name reaches it) and that name is a callable.
2. ``AcceleratedOptimizer.zero_grad()`` (the public call) runs ``inspect.signature`` on the wrapped optimizer
   on every call. Its effect for torch optimizers is ``optimizer.zero_grad(set_to_none=True)`` when gradients
   are synchronised (at the end of an accumulation), nothing otherwise: :func:`zero_grad` does exactly that.
   Relies on: the public call does that and nothing else; probed with a recording optimizer, once with and
   once without synchronised gradients, comparing what the public call and the bypass ask of it and
   checking that the public call changes none of the wrapper's own attributes.
Together they make a batch-4 LeNet step (the tutorial preset) about 12 % faster on a CPU (the first about 8 %,
the second about 2 %); at batch 128 the difference is within noise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional

import accelerate
import accelerate.optimizer
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer


@dataclass(frozen=True)
class Status:
    """Which bypasses the installed Accelerate allows (see the module docstring)."""

    package_check_cached: bool
    zero_grad_bypassed: bool

    def note(self) -> Optional[str]:
        """The start-up line when a bypass is off, else None. The costs are bench/workarounds.py's figures
        (bench/results/workarounds.md): each bypass alone, and 11 % for both."""
        off = [(name, cost) for name, on, cost in (
            ("the cached lomo_optim check in optimizer.step", self.package_check_cached, 7),
            ("the direct optimizer.zero_grad", self.zero_grad_bypassed, 2)) if not on]
        if not off:
            return None
        cost = off[0][1] if len(off) == 1 else 11
        return (f"accelerate {accelerate.__version__} does not behave as cifarlab's speed-ups assume, so "
                f"{' and '.join(name for name, _ in off)} {'is' if len(off) == 1 else 'are'} off and Accelerate's "
                f"public API is used: batch-4 CPU steps (the tutorial preset) about {cost} % slower "
                f"(bench/workarounds.py measures it)")


_status: Optional[Status] = None


def apply() -> Status:
    """Probe the installed Accelerate and turn on the bypasses it allows; the probes run once per process.
    Call after the Accelerator exists (the probe wraps an optimizer, which reads Accelerate's state)."""
    global _status
    if _status is None:
        _status = Status(_cache_package_check(), _zero_grad_matches_public())
    return _status


def zero_grad(optimizer: AcceleratedOptimizer, accelerator: Accelerator) -> None:
    """``optimizer.zero_grad()`` for a prepared (Accelerate-wrapped) optimizer, less its per-call signature
    inspection (2. above) where :func:`apply` found the installed Accelerate to allow it."""
    if _status is None or not _status.zero_grad_bypassed:
        optimizer.zero_grad()
    else:
        _bypass(optimizer.optimizer, accelerator.sync_gradients)


def _bypass(optimizer: Any, sync_gradients: bool) -> None:
    if sync_gradients:
        optimizer.zero_grad(set_to_none=True)


def _cache_package_check() -> bool:
    """1. above: whether Accelerate's optimizer step now asks a cached package check."""
    check: Optional[Callable[[], bool]] = getattr(accelerate.optimizer, "is_lomo_available", None)
    if hasattr(check, "cache_info"):
        return True  # cached already (apply ran in another Accelerate state, or a test reset _status)
    looked_up = "is_lomo_available" in _names_used(AcceleratedOptimizer.step)
    if check is None or not callable(check) or not looked_up:
        return False
    cached = functools.lru_cache(maxsize=None)(check)
    if cached() != check():
        return False
    accelerate.optimizer.is_lomo_available = cached
    return True


def _names_used(function: Any) -> tuple[str, ...]:
    """The global and attribute names a function's code refers to (empty when it has no Python code)."""
    code = getattr(function, "__code__", None)
    return tuple(code.co_names) if code is not None else ()


class _Recorder(torch.optim.Optimizer):
    """An optimizer that records how it is asked to clear gradients, and does nothing else."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1, requires_grad=True)], {"lr": 0.0})
        self.calls: list[dict[str, Any]] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.calls.append({"set_to_none": set_to_none})

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        return None


def _zero_grad_matches_public() -> bool:
    """2. above: whether the bypass asks the wrapped optimizer exactly what the public call asks, with and without
    synchronised gradients, and the public call changes nothing else on the wrapper."""
    try:
        for sync in (False, True):
            public, bypassed = _Recorder(), _Recorder()
            wrapped = AcceleratedOptimizer(public, device_placement=False)
            wrapped.gradient_state = SimpleNamespace(sync_gradients=sync)  # this probe's own, not the shared one
            before = dict(vars(wrapped))
            wrapped.zero_grad()
            _bypass(bypassed, sync)
            if public.calls != bypassed.calls or dict(vars(wrapped)) != before:
                return False
    except Exception:  # any change that breaks the probe itself: take the public API
        return False
    return True
