"""BatchNorm that trains the same model on 1 or N processes: ghost batch norm keyed to the position in the
global batch (``model.bn_group_size``), and torch's SyncBatchNorm (``model.sync_bn``).

Plain BatchNorm2d under DDP normalises over each process's share of the batch, so 2 processes normalise
other sets of samples than 1 process does, and DDP keeps rank 0's running statistics. With ghost batch norm
every run of ``group_size`` consecutive samples of a batch is normalised on its own. Accelerate splits each
global batch into contiguous per-process chunks (``split_batches=True``) and the trainer checks at start-up
that a chunk holds whole groups, so the same samples are normalised together at any process count.

Running statistics: each forward updates them once, with the average over its groups of each group's mean
and unbiased variance. The update is affine in those statistics with the same coefficients on every rank, so
the mean over ranks of their running statistics is the 1-process value; :class:`RunningStatsSync` sets every
rank to that mean after each optimizer step (one all-reduce), and DDP must not broadcast rank 0's buffers
(``broadcast_buffers=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises each run of ``group_size`` consecutive samples of its input
    by that group's own mean and (biased) variance; a batch that is not a multiple of ``group_size`` ends in
    one smaller group (the trainer never feeds one: training drops the last partial batch).

    Each forward updates the running statistics once, as BatchNorm2d does, with the average over the groups
    (every group counting once) of the group mean and unbiased group variance, and counts one batch in
    ``num_batches_tracked``. In eval mode it is BatchNorm2d. Its state dict has BatchNorm2d's keys, so
    checkpoints load either way.
    """

    def __init__(self, num_features: int, group_size: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        if group_size < 1:
            raise ValueError(f"group_size={group_size} must be >= 1")
        self.group_size = group_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        size = input.shape[0]
        if not self.training or size <= self.group_size:  # running statistics, or a single group: BatchNorm2d
            return super().forward(input)
        self._check_input_dim(input)
        factor = self._count_batch()
        whole = size - size % self.group_size
        parts = [(input[:whole], whole // self.group_size)]
        if whole < size:
            parts.append((input[whole:], 1))
        outputs, means, variances = [], [], []
        for part, groups in parts:
            output, updated = self._normalise_groups(part, groups, factor)
            outputs.append(output)
            if updated is not None:
                means.append(updated[0])
                variances.append(updated[1])
        if self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():  # the average over all groups of their updated copies: one update
                self.running_mean.copy_(torch.cat(means).mean(0))
                self.running_var.copy_(torch.cat(variances).mean(0))
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if input.dim() == 4 and not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last):
            output = output.contiguous(memory_format=torch.channels_last)  # as the next conv expects it
        return output

    def _count_batch(self) -> float:
        """Count this forward in ``num_batches_tracked``; the weight of its statistics in the running ones
        (as BatchNorm2d: ``momentum``, or 1 / batches counted for a cumulative average)."""
        if not self.track_running_stats or self.num_batches_tracked is None:
            return 0.0
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked.item()) if self.momentum is None else self.momentum

    def _normalise_groups(self, part: torch.Tensor, groups: int,
                          factor: float) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]:
        """``part`` (groups x g samples) normalised group by group; and each group's copy of the running
        mean and variance after its update (groups x C each), None when they are not tracked."""
        size, channels, *spatial = part.shape
        per_group = size // groups
        # (groups*g, C, H, W) -> (g, groups*C, H, W): channel c of group i becomes channel i*C + c, so one call
        # of the fused BatchNorm kernel (forward and backward) normalises every group by its own statistics.
        grouped = part.reshape(groups, per_group, channels, *spatial).transpose(0, 1)
        grouped = grouped.reshape(per_group, groups * channels, *spatial)
        mean = self.running_mean.repeat(groups) if self.running_mean is not None else None
        variance = self.running_var.repeat(groups) if self.running_var is not None else None
        weight = self.weight.repeat(groups) if self.weight is not None else None
        bias = self.bias.repeat(groups) if self.bias is not None else None
        output = F.batch_norm(grouped, mean, variance, weight, bias, True, factor, self.eps)
        output = output.reshape(per_group, groups, channels, *spatial).transpose(0, 1).reshape(part.shape)
        if mean is None or variance is None:
            return output, None
        return output, (mean.view(groups, channels), variance.view(groups, channels))


def convert_ghost_batchnorm(module: nn.Module, group_size: int) -> nn.Module:
    """``module`` with every BatchNorm2d in it replaced by a :class:`GhostBatchNorm2d` holding the same
    parameter and buffer tensors (frozen parameters stay frozen); children are replaced in place."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GhostBatchNorm2d):
        ghost = GhostBatchNorm2d(module.num_features, group_size, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(ghost, name, tensor)
        return ghost.train(module.training)
    for name, child in module.named_children():
        replaced = convert_ghost_batchnorm(child, group_size)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def ghost_modules(model: nn.Module) -> list[GhostBatchNorm2d]:
    return [module for module in model.modules() if isinstance(module, GhostBatchNorm2d)]


class RunningStatsSync:
    """Sets the running mean and variance of ``modules`` on every rank to their mean over the ranks, with one
    collective for all layers: ``reduce_mean`` (e.g. ``accelerator.reduce(t, "mean")``) of one flat tensor.

    ``num_batches_tracked`` is left alone: every rank counts the same forwards. Call it on every rank at the
    same point (after each optimizer step), where every rank has run the same number of forwards.
    """

    def __init__(self, modules: list[GhostBatchNorm2d], reduce_mean: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.modules = modules
        self.reduce_mean = reduce_mean

    def _buffers(self) -> list[torch.Tensor]:
        # Read at each call: loading a checkpoint copies into these tensors, but nothing promises it always will.
        return [buffer for module in self.modules for buffer in (module.running_mean, module.running_var)
                if buffer is not None]

    @torch.no_grad()
    def __call__(self) -> None:
        buffers = self._buffers()
        if not buffers:
            return
        averaged = self.reduce_mean(torch.cat([buffer.reshape(-1) for buffer in buffers]))
        for buffer, values in zip(buffers, averaged.split([buffer.numel() for buffer in buffers])):
            buffer.copy_(values.view_as(buffer))
