"""What a checkpoint's pickles may be loaded with.

Accelerate saves the optimizer (``optimizer.bin``), the schedule (``scheduler.bin``), the RNG states
(``random_states_{rank}.pkl``) and, with fp16, the loss scaler (``scaler.pt``) as pickles, and loads each with
``torch.load(weights_only=True)`` (its ``load`` default, from Accelerate 1.1 on; cifarlab passes it nothing else and
registers no ``register_for_checkpointing`` object, which Accelerate would unpickle with ``weights_only=False``). The
weights (``model.safetensors``, ``ema.safetensors``) are safetensors, which hold no code. That no pickled code runs
therefore rests on torch's restricted unpickler: :data:`SAFE_TORCH` is the first torch without a known way around it,
setup.cfg's floor, and a torch below it (installed past the floor: conda, ``--no-deps``) loads no checkpoint at all.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.torch_version import TorchVersion

from cifarlab import files
from cifarlab.errors import UsageError

SAFE_TORCH = "2.10"
"""2.6 fixed CVE-2025-32434 and 2.10 CVE-2026-24747, each a way for a file loaded with ``weights_only=True`` to run
code. setup.cfg's torch floor (a test keeps the two equal)."""


def require_safe_torch(checkpoint: Path) -> None:
    """Refuse to load ``checkpoint``'s pickles with a torch older than :data:`SAFE_TORCH`."""
    if TorchVersion(torch.__version__) < SAFE_TORCH:
        raise UsageError(f"checkpoint {files.typed(checkpoint)}: torch {torch.__version__} can run code stored in a "
                         f"checkpoint's pickled files while loading them (CVE-2026-24747); upgrade torch to >= "
                         f"{SAFE_TORCH} to resume, or start a new run")
