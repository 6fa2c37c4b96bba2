"""The weight average (``train.ema``): an exponential moving average of a model's weights and BatchNorm statistics
that never reads its state back from the device."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn


class WeightAverage(nn.Module):
    """An exponential moving average of a model's weights and buffers (BatchNorm statistics), with the state dict of
    torch's ``AveragedModel(..., multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)`` (``module.*`` and
    ``n_averaged``: checkpoints' ema.safetensors and :mod:`cifarlab.run.loading` read those keys) and its numbers:
    the first update copies, later ones are ``torch._foreach_lerp_(average, model, 1 - decay)`` (integer buffers:
    ``decay * average + (1 - decay) * model``, truncated).

    AveragedModel keeps its update count in a device tensor and reads it back twice per update (``bool(n_averaged
    == 0)``, ``n_averaged > 0``): two host-device syncs per step on a GPU. Here the count lives in Python; the
    ``n_averaged`` buffer is only written (asynchronously) for the state dict, and read once when one is loaded."""

    n_averaged: torch.Tensor

    def __init__(self, model: nn.Module, decay: float, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).to(device) if device is not None else copy.deepcopy(model)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        self.decay = decay
        self.count = 0
        """Updates so far (the ``n_averaged`` buffer's value, kept on the host)."""
        self.register_load_state_dict_post_hook(WeightAverage._count_loaded)

    @staticmethod
    def _count_loaded(module: nn.Module, incompatible: Any) -> None:
        assert isinstance(module, WeightAverage)
        module.count = int(module.n_averaged)  # once per checkpoint load

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Average ``model``'s current weights and buffers in (the first update copies them)."""
        mine = [t.detach() for t in (*self.module.parameters(), *self.module.buffers())]
        theirs = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if self.count == 0:
            torch._foreach_copy_(mine, theirs)
        else:
            groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
            for average, current in zip(mine, theirs, strict=True):
                pair = groups.setdefault((average.device, average.dtype), ([], []))
                pair[0].append(average)
                pair[1].append(current)
            for (_, dtype), (averages, currents) in groups.items():
                if dtype.is_floating_point or dtype.is_complex:
                    torch._foreach_lerp_(averages, currents, 1 - self.decay)
                else:  # num_batches_tracked: as get_ema_multi_avg_fn does
                    for average, current in zip(averages, currents, strict=True):
                        average.copy_(average * self.decay + current * (1 - self.decay))
        self.count += 1
        self.n_averaged.fill_(self.count)  # a host scalar written into the buffer: no read back

    @torch.no_grad()
    def sync_buffers(self, mean_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Make the averaged floating-point buffers (BatchNorm running statistics) the mean over ranks, in one
        collective: each rank averaged its own statistics, measured on its share of the batches."""
        buffers = [b for b in self.module.buffers() if b.dtype.is_floating_point]
        if not buffers:
            return
        flat = mean_over_ranks(torch.cat([b.reshape(-1) for b in buffers]))
        torch._foreach_copy_(buffers, list(flat.split([b.numel() for b in buffers])))
