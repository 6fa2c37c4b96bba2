"""MixUp and CutMix on training batches (``data.mixup``, ``data.cutmix``), with soft targets, on either data path.

Images are mixed in fixed pairs, batch positions 2k and 2k+1 of the global batch. Accelerate hands each process
a contiguous, even-sized slice of it (split_batches; the even size is checked at start-up), so every process holds
whole pairs and the pairs do not depend on the process count. Each pair's draws (the mixing weight, the
MixUp-or-CutMix coin, the box) come from the counter-based hash of (train.seed, epoch, the pair's two sample
indices) that seeds the other augmentations: the same mixed batches on 1 or N processes and after a resume.

torchvision's transforms v2 MixUp/CutMix are not used: they draw one weight per call from torch's global generator
and pair each image with its neighbour by rolling the batch, so the pairs and weights would change with the
process count and the batch split. Here the draws are per pair and stateless, as in timm's per-element mode."""

from __future__ import annotations

import math

import torch

from cifarlab.data.seeding import bits

_TRIES = 4  # Marsaglia-Tsang candidates per gamma draw; each is accepted with probability > 0.95 (shape >= 1)


def _uniform(seed: int, epoch: int, keys: torch.Tensor, slot: int) -> torch.Tensor:
    """A uniform in (0, 1) per pair, float64, from the hash of (seed, epoch, pair key, slot < 64)."""
    return (bits(seed, epoch, keys * 64 + slot, 3).to(torch.float64) + 0.5) / 2.0**31


def _log_gamma_sample(seed: int, epoch: int, keys: torch.Tensor, first: int, shape: float) -> torch.Tensor:
    """log of a Gamma(shape, 1) draw per pair from slots first .. first + 3 * _TRIES: Marsaglia and Tsang (2000) for
    shape + 1, boosted to ``shape`` by U**(1/shape); computed in logs so that small shapes do not underflow."""
    d = shape + 1.0 - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    drawn = torch.full(keys.shape, math.log(d), dtype=torch.float64, device=keys.device)  # after _TRIES misses
    for attempt in reversed(range(_TRIES)):  # the first accepted candidate wins
        slot = first + 1 + 3 * attempt
        u1, u2, accept = (_uniform(seed, epoch, keys, slot + i) for i in range(3))
        normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        v = (1.0 + c * normal) ** 3
        positive = v > 0
        log_v = torch.log(torch.where(positive, v, 1.0))
        ok = positive & (torch.log(accept) < 0.5 * normal**2 + d - d * v + d * log_v)
        drawn = torch.where(ok, math.log(d) + log_v, drawn)
    return drawn + torch.log(_uniform(seed, epoch, keys, first)) / shape


def beta_sample(seed: int, epoch: int, keys: torch.Tensor, first: int, alpha: float) -> torch.Tensor:
    """A Beta(alpha, alpha) draw per pair (float64): G1 / (G1 + G2) of two gamma draws."""
    span = 1 + 3 * _TRIES
    return torch.sigmoid(_log_gamma_sample(seed, epoch, keys, first, alpha)
                         - _log_gamma_sample(seed, epoch, keys, first + span, alpha))


def pair_keys(indices: torch.Tensor) -> torch.Tensor:
    """One key per pair (positions 2k, 2k+1) from the two sample indices, never equal to a sample index (the
    per-sample augmentations hash those)."""
    indices = indices.to(torch.int64)
    return (indices[0::2] + 1) * 2**31 + indices[1::2]


def mix(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int, mixup: float,
        cutmix: float, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed images, soft targets (N, classes)) of a batch of normalised ``images`` whose size is even, each pair
    2k, 2k+1 mixed with one weight: MixUp blends the two images, CutMix pastes the same box of each into the other;
    each target is the two one-hot labels weighted as its image is (CutMix: by the box's area after clipping)."""
    keys = pair_keys(indices.to(images.device))
    _, _, height, width = images.shape
    span = 2 * (1 + 3 * _TRIES)
    both = mixup > 0 and cutmix > 0  # then a coin per pair picks CutMix or MixUp
    if both:
        boxed = _uniform(seed, epoch, keys, 0) < 0.5
    else:
        boxed = torch.full(keys.shape, cutmix > 0, device=images.device)
    weight = beta_sample(seed, epoch, keys, 1, mixup or cutmix)
    if both:
        weight = torch.where(boxed, beta_sample(seed, epoch, keys, 1 + span, cutmix), weight)
    # CutMix's box (timm's rand_bbox): sides sqrt(1 - weight) of the image's, centred on a uniform pixel, clipped.
    side = torch.sqrt(1.0 - weight)
    cut_h, cut_w = (side * height).floor().long(), (side * width).floor().long()
    centre_y = (_uniform(seed, epoch, keys, 1 + 2 * span) * height).floor().long()
    centre_x = (_uniform(seed, epoch, keys, 2 + 2 * span) * width).floor().long()
    top, bottom = (centre_y - cut_h // 2).clamp(0, height), (centre_y + cut_h // 2).clamp(0, height)
    left, right = (centre_x - cut_w // 2).clamp(0, width), (centre_x + cut_w // 2).clamp(0, width)
    rows, cols = torch.arange(height, device=images.device), torch.arange(width, device=images.device)
    box = (((rows >= top[:, None]) & (rows < bottom[:, None]))[:, :, None]
           & ((cols >= left[:, None]) & (cols < right[:, None]))[:, None, :])  # (pairs, height, width)
    box &= boxed[:, None, None]
    area = ((bottom - top) * (right - left)).to(torch.float64) / (height * width)
    weight = torch.where(boxed, 1.0 - area, weight)

    first, second = images[0::2], images[1::2]
    blend = weight.to(images.dtype).view(-1, 1, 1, 1)
    mixed_first = torch.where(box[:, None], second, torch.where(boxed.view(-1, 1, 1, 1), first,
                                                                 blend * first + (1 - blend) * second))
    mixed_second = torch.where(box[:, None], first, torch.where(boxed.view(-1, 1, 1, 1), second,
                                                                 blend * second + (1 - blend) * first))
    hot = torch.nn.functional.one_hot(labels.to(images.device).long(), classes).to(torch.float32)
    share = weight.to(torch.float32).view(-1, 1)
    target_first = share * hot[0::2] + (1 - share) * hot[1::2]
    target_second = share * hot[1::2] + (1 - share) * hot[0::2]
    mixed = torch.stack((mixed_first, mixed_second), dim=1).flatten(0, 1)
    return mixed, torch.stack((target_first, target_second), dim=1).flatten(0, 1)
