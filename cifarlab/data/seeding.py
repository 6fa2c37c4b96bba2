"""The counter-based hash that seeds the batched augmentations (cifarlab.data.tensors) and MixUp/CutMix
(cifarlab.data.mixing): pseudo-random bits as a pure function of (train.seed, epoch, index, stream), with no
generator state, so the draws never depend on the process count, the batch split or a resume point."""

from __future__ import annotations

import torch


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def bits(seed: int, epoch: int, indices: torch.Tensor, stream: int) -> torch.Tensor:
    """31 pseudo-random bits per sample from (seed, epoch, index, stream): splitmix64's finaliser on
    int64 tensors (wrapping arithmetic, so CPU and GPU agree)."""
    salt = _signed((((seed * 1_000_003 + epoch) * 4 + stream) * 0xBF58476D1CE4E5B9) % (1 << 64))
    x = indices.to(torch.int64) * _GOLDEN + salt
    x = (x ^ (x >> 30)) * _MIX1
    x = (x ^ (x >> 27)) * _MIX2
    x = x ^ (x >> 31)
    return (x >> 16) & 0x7FFF_FFFF
