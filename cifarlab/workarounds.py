"""Where cifarlab steps around Accelerate's public API, and why. Each is measured (``bench/workarounds.py``)
and applies only to the Accelerate versions it was read and tested against (:data:`TESTED`); any other
version takes the public API. ``tests/test_workarounds.py`` fails when the installed Accelerate is not one
of them or its code no longer looks as assumed here: re-read the code, re-measure, then update TESTED.

1. ``AcceleratedOptimizer.step`` asks ``accelerate.utils.is_lomo_available()`` twice per call: an
   importlib search of sys.path for ``lomo_optim`` (about 0.1 ms each on a 2-core CPU). Installed packages
   do not change during a run, so the answer is cached (``functools.lru_cache`` on the name that
   ``accelerate.optimizer`` looks up).
2. ``AcceleratedOptimizer.zero_grad()`` (the public call) runs ``inspect.signature`` on the wrapped
   optimizer on every call. Its effect for torch optimizers is ``optimizer.zero_grad(set_to_none=True)``
   when gradients are synchronised (at the end of an accumulation), nothing otherwise: :func:`zero_grad`
   does exactly that.
Together they make a batch-4 LeNet step (the tutorial preset) about 15 % faster on a CPU; at batch 128 the
difference is within noise.
"""

from __future__ import annotations

import functools

import accelerate
import accelerate.optimizer
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer

TESTED = ("1.15",)
"""Accelerate major.minor versions whose AcceleratedOptimizer.step and zero_grad these were checked against."""


def accelerate_version() -> str:
    return ".".join(accelerate.__version__.split(".")[:2])


ACTIVE = accelerate_version() in TESTED
"""Whether the workarounds apply to the installed Accelerate (else the public API is used)."""


def apply() -> None:
    """Cache Accelerate's per-step package check (1. above); idempotent."""
    check = getattr(accelerate.optimizer, "is_lomo_available", None)
    if ACTIVE and check is not None and not hasattr(check, "cache_info"):
        accelerate.optimizer.is_lomo_available = functools.lru_cache(maxsize=None)(check)


def zero_grad(optimizer: AcceleratedOptimizer, accelerator: Accelerator) -> None:
    """``optimizer.zero_grad()`` for a prepared (Accelerate-wrapped) optimizer, less its per-call signature
    inspection (2. above)."""
    if not ACTIVE:
        optimizer.zero_grad()
    elif accelerator.sync_gradients:
        optimizer.optimizer.zero_grad(set_to_none=True)
