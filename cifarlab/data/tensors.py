"""The tensor data path (``data.loader=tensor``): decode the dataset once into uint8 tensors, keep it in
memory, and augment whole batches on the device with pure tensor functions.

Each sample's crop offset and flip come from a counter-based hash of (train.seed, epoch, sample index),
like the torchvision path's per-sample seeding: the same numbers at any process count, batch split or
resume point, on CPU or GPU. The decoded tensors are cached next to the data (safetensors, keyed by a
fingerprint of the source files, so a changed source is decoded again). A run that finds its cache
imports no torchvision. The one-off decode of an image folder shows its progress where the caller says
(:class:`cifarlab.data.path.Progress`): one bar over both splits, one line when done.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from cifarlab import files
from cifarlab.config import DataConfig
from cifarlab.data.path import Batch, DataPath, Progress, cut, size, source_of, splits, spread
from cifarlab.data.seeding import bits
from cifarlab.data.sources import fingerprint, open_source
from cifarlab.errors import UsageError

_CACHE_DIR = ".cifarlab-cache"
_SPLITS = ("train", "test")
_REPORT_EVERY = 500  # images decoded between progress reports (a report per image would cost more than a bar shows)
_PAD = 4  # random crop = translation by up to 4 pixels with zero fill, as RandomCrop(32, padding=4)


class TensorImages(Dataset):
    """uint8 images (N, 3, H, W) and labels in memory. Batches are fetched whole (``__getitems__``)
    as (images, labels, sample indices); the indices seed each sample's augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, source_key: Optional[str] = None,
                 rows: Optional[list[int]] = None) -> None:
        self.images = images
        self.labels = labels
        self.source_key = source_key
        """The cache key of the files the images were decoded from (:func:`fingerprint`); None for fake data."""
        self.rows = rows
        """Which images of the decoded split these are, by index; None: all of them, in order."""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.images[index], int(self.labels[index]), index

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        if self.images.device.type == "cuda":
            # Indexing GPU images with CPU rows copies the rows synchronously (a stream sync per batch): copy them
            # from pinned memory without blocking, ahead of the gather that reads them.
            rows = rows.pin_memory().to(self.images.device, non_blocking=True)
        elif rows.device != self.images.device:
            rows = rows.to(self.images.device)
        return self.images[rows], self.labels[rows], rows


def batch_as_is(batch: Any) -> Any:
    """collate_fn for :class:`TensorImages`: ``__getitems__`` already returns a whole batch."""
    return batch


class TensorData(DataPath):
    """Whole batches are sliced out of memory and augmented and normalised on their device."""

    train: TensorImages
    test: TensorImages
    val: Optional[TensorImages]

    @classmethod
    def build(cls, config: DataConfig, seed: int, warn: Callable[[str], None], device: Optional[torch.device] = None,
              progress: Optional[Progress] = None) -> DataPath:
        # Both source splits decoded at once (one bar and one line), then sliced: the validation images out of the
        # training split's.
        loaded = load_splits(config, warn, progress)
        found = {split: part for source in _SPLITS for split, part in _in_memory(config, source, loaded[source],
                                                                                  device).items()}
        return cls.of_splits(config, seed, *(found[split] for split in splits(config)))

    @classmethod
    def split(cls, config: DataConfig, seed: int, split: str, warn: Callable[[str], None],
              device: Optional[torch.device]) -> tuple[Dataset, list[str]]:
        return _in_memory(config, source_of(split), load_tensors(config, source_of(split), warn), device)[split]

    def to_model(self, batch: Any, train: bool) -> Batch:
        images, labels, indices = batch
        config = self.config
        if train and config.augment != "none":
            images = augment(images, indices, self.seed, self.epoch, config.augment)
        images = normalize(images, *config.normalization())
        if train and config.cutout:
            images = cutout(images, indices, self.seed, self.epoch, config.cutout)
        return images, labels

    def source_keys(self) -> Optional[dict[str, str]]:
        # Computed while loading (listing an image folder's files again would cost a start 0.25 s).
        found = {"train": self.train.source_key, "test": self.test.source_key}
        return self.with_val_key({split: key for split, key in found.items() if key is not None})

    def held_out(self) -> Optional[list[int]]:
        return None if self.val is None else self.val.rows

    def loader_options(self) -> dict[str, Any]:
        # Whole batches are sliced out of memory in the training process: workers would only copy them.
        return {"num_workers": 0, "collate_fn": batch_as_is}

    def sample(self, train: bool, count: int, augmented: bool = True) -> Batch:
        dataset = self.train if train else self.test
        images, labels = self.to_model(dataset.__getitems__(spread(len(dataset), count)), train and augmented)
        return images.cpu(), labels.cpu()


Loaded = tuple[torch.Tensor, torch.Tensor, list[str], Optional[str]]
"""A split, decoded: uint8 images (N, 3, H, W), labels, class names and the source files' key (None for fake data)."""


def _in_memory(config: DataConfig, source: str, loaded: Loaded,
               device: Optional[torch.device]) -> dict[str, tuple[TensorImages, list[str]]]:
    """The splits cut from the decoded source split ``source`` (:func:`cifarlab.data.path.cut`), in memory."""
    images, labels, classes, source_key = loaded
    found = cut(config, source, len(labels), lambda: labels, classes)
    return {split: (_rows(images, labels, indices, source_key, device), classes) for split, indices in found.items()}


def _rows(images: torch.Tensor, labels: torch.Tensor, indices: Optional[list[int]], source_key: Optional[str],
          device: Optional[torch.device]) -> TensorImages:
    if indices is not None:
        images, labels = images[indices], labels[indices]
    if device is not None:
        # On a GPU the whole uint8 set (150 MB for CIFAR-10's training split) lives on the device: batches
        # are sliced and augmented there, with no host-to-device copy per step.
        images, labels = images.to(device), labels.to(device)
    return TensorImages(images, labels, source_key, indices)


# --- decoding and the cache -------------------------------------------------------------------------

def _decode(base: Any, done: Callable[[int], None] = lambda count: None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, H, W), labels) of a dataset of PIL images, or of torchvision's CIFAR; ``done`` hears
    every few hundred images how many more are decoded."""
    data = getattr(base, "data", None)
    if isinstance(data, np.ndarray) and data.ndim == 4:  # torchvision's CIFAR: decoded already, (N, 32, 32, 3)
        return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous(), torch.tensor(base.targets)
    images, labels = [], []
    for index in range(size(base)):
        image, label = base[index]
        images.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
        labels.append(label)
        if (index + 1) % _REPORT_EVERY == 0:
            done(_REPORT_EVERY)
    done(size(base) % _REPORT_EVERY)
    return torch.stack(images), torch.tensor(labels)


def load_tensors(config: DataConfig, split: str, warn: Callable[[str], None],
                 progress: Optional[Progress] = None) -> Loaded:
    """Decoded (images, labels, class names, the source files' key) of ``split``: see :func:`load_splits`."""
    return load_splits(config, warn, progress, (split,))[split]


def load_splits(config: DataConfig, warn: Callable[[str], None], progress: Optional[Progress] = None,
                splits: Sequence[str] = _SPLITS) -> dict[str, Loaded]:
    """Each split decoded, as (images, labels, class names, the source files' key): from the cache under
    ``data.root`` when it is current, else decoded and cached. The key is None where there are no files to key
    (fake data: decoded every time, never cached). Decoding image files into the cache, seconds of one-off work,
    goes to ``progress``: one bar over every split decoded, one line when done."""
    loaded: dict[str, Loaded] = {}
    opened: dict[str, tuple[Dataset, list[str], Optional[tuple[str, list[str]]]]] = {}
    for split in splits:
        found = fingerprint(config, split)
        cache = _cache_file(config, split, found[0]) if found else None
        if found is not None and cache is not None and cache.is_file():
            tensors = load_file(str(cache))
            loaded[split] = (tensors["images"], tensors["labels"], found[1], found[0])
        else:
            base, classes = open_source(config, split)
            opened[split] = (base, classes, found or fingerprint(config, split))  # a CIFAR set may be new
    # The one-off work: image files decoded one by one into a cache (CIFAR comes decoded; fake data is not cached).
    one_off = [split for split, (base, _, found) in opened.items()
               if found is not None and not isinstance(getattr(base, "data", None), np.ndarray)]
    count = sum(size(opened[split][0]) for split in one_off)
    started = time.perf_counter()
    bar = (progress.progress(f"decoding {count:,} images", count) if progress is not None and count
           else contextlib.nullcontext(lambda done: None))
    cached = True
    with bar as done:
        for split, (base, classes, found) in opened.items():
            images, labels = _decode(base, done if split in one_off else lambda count: None)
            if found is not None:
                cached = _save_cache(config, split, found[0], images, labels, warn) and cached
            loaded[split] = (images, labels, classes, found[0] if found else None)
    if progress is not None and count:
        where = f"into {Path(config.root) / _CACHE_DIR}" if cached else "(not cached: see the warning above)"
        progress.log(f"decoded {count:,} images in {time.perf_counter() - started:.1f} s {where}")
    return {split: loaded[split] for split in splits}


def _save_cache(config: DataConfig, split: str, key: str, images: torch.Tensor, labels: torch.Tensor,
                warn: Callable[[str], None]) -> bool:
    """Write ``split``'s decoded tensors to its cache file (and remove stale ones); False, with a warning, when
    that fails."""
    cache = _cache_file(config, split, key)
    try:
        cache.parent.mkdir(exist_ok=True)
        # Under a name of its own (several runs may decode at once), published with the umask's mode (a shared data
        # folder: other users may read the cache too); a link planted at the cache's name is not written through.
        with files.replacing(cache) as tmp:
            save_file({"images": images, "labels": labels}, str(tmp))
        for stale in cache.parent.glob(_cache_file(config, split, "*").name):
            if stale != cache:
                stale.unlink()  # decoded from files that have changed since (a link: the link, not its target)
    except (OSError, UsageError) as error:
        warn(f"could not cache decoded images in {files.typed(cache.parent)} ({error}); they will be decoded again "
             f"next run")
        return False
    return True


def _cache_file(config: DataConfig, split: str, key: str) -> Path:
    """Where ``split``'s decoded tensors are cached. data.root=data holds both CIFAR sets by default, and
    a new cache deletes the stale ones of its name: CIFAR-100's carry a prefix of their own (CIFAR-10's and
    an image folder's keep the names they had before CIFAR-100, so existing caches stay valid)."""
    prefix = "cifar100-" if config.name == "cifar100" else ""
    return Path(config.root) / _CACHE_DIR / f"{prefix}{split}-{key}.safetensors"


# --- batched augmentation ---------------------------------------------------------------------------

def flip_lr(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the images where ``flip`` (bool, per sample) is set."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def translate(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift each image by (dy, dx) pixels within [-4, 4], filling with zeros: a random crop of the
    4-pixel zero-padded image."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (_PAD, _PAD, _PAD, _PAD))
    rows = (dy + _PAD).view(-1, 1) + torch.arange(height, device=images.device)
    cols = (dx + _PAD).view(-1, 1) + torch.arange(width, device=images.device)
    picked = padded[torch.arange(batch, device=images.device).view(-1, 1, 1), :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2)  # advanced indexing put the channel last


def augment(images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int, mode: str) -> torch.Tensor:
    """``data.augment`` on a batch: 'flip' and/or 'flip_crop', drawn per sample as the torchvision path does
    (crop offset uniform over the 9 x 9 positions, flip with probability 1/2)."""
    indices = indices.to(images.device)
    if mode == "flip_crop":
        span = 2 * _PAD + 1
        dy = bits(seed, epoch, indices, 1) % span - _PAD
        dx = bits(seed, epoch, indices, 2) % span - _PAD
        images = translate(images, dy, dx)
    if mode in ("flip", "flip_crop"):
        images = flip_lr(images, bits(seed, epoch, indices, 0) % 2 == 1)
    return images


def cutout(images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int, size: int) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square of each (normalised, so zero is the mean colour) image, centred on a
    pixel drawn uniformly per sample and clipped at the border, as :class:`cifarlab.data.Cutout` does."""
    indices = indices.to(images.device)
    _, _, height, width = images.shape
    top = (bits(seed, epoch, indices, 3) % height - size // 2).view(-1, 1)
    left = (bits(seed, epoch, indices, 4) % width - size // 2).view(-1, 1)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    inside_rows = (rows >= top) & (rows < top + size)  # (batch, height)
    inside_cols = (cols >= left) & (cols < left + size)  # (batch, width)
    square = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
    return images.masked_fill(square, 0.0)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 -> float in [0, 1] (as ToTensor) -> (x - mean) / std (as Normalize), as one multiply-add
    per pixel on a single new tensor: x * (1 / (255 std)) - mean / std."""
    scale, shift = _affine(tuple(mean), tuple(std), images.device)
    return torch.addcmul(shift, images.float(), scale)


@functools.lru_cache(maxsize=8)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).float().view(1, -1, 1, 1).to(device)
    shift = (-torch.tensor(mean, dtype=torch.float64) / std_t).float().view(1, -1, 1, 1).to(device)
    return scale, shift
