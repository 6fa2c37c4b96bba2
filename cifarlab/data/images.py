"""The per-image data path (``data.loader=torchvision``): decode and augment each image with torchvision
transforms in DataLoader workers, each sample under its own seeded generator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch.utils.data import Dataset, Subset

from cifarlab.config import DataConfig
from cifarlab.data.path import Batch, DataPath, Progress, cut, size, source_of, splits, spread
from cifarlab.data.sources import labels_of, open_source


class SeededTransform(Dataset):
    """Applies ``transform`` to ``base[index]`` under an RNG seeded by (seed, epoch, index).

    torchvision's random transforms draw from torch's global generator, so the draw is
    wrapped in ``fork_rng``: the caller's generator state is left untouched.

    The epoch lives in a shared-memory tensor: persistent DataLoader workers keep the copy of this object they
    were started with, and read the epoch :meth:`set_epoch` wrote in the training process (before the epoch's
    iterator is created, hence before the workers fetch any of its samples).
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor], seed: int, random: bool) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed
        self.random = random
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)  # a host tensor: no device involved

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return size(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        if not self.random:
            return self.transform(image), int(label)
        with torch.random.fork_rng(devices=[]):
            # A tuple of ints hashes the same in every process (no hash randomisation for ints). The CPU generator
            # only (the one the transforms draw from, and the one fork_rng restores): torch.manual_seed would also
            # reseed every accelerator's generator, for good, and record a stack trace per sample for each one
            # not yet initialised (about 1 ms a sample under a deep stack, e.g. pytest's).
            torch.default_generator.manual_seed(hash((self.seed, self.epoch, index)) & 0xFFFF_FFFF_FFFF)
            return self.transform(image), int(label)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int, int]]:
        """A loader's batch, each sample with its index (collated third): MixUp/CutMix pair samples by index
        (cifarlab.data.mixing), as the tensor path's batches do."""
        return [(*self[index], index) for index in indices]


class Cutout:
    """Zero a ``size`` x ``size`` square of a normalised (C, H, W) image, centred on a uniformly drawn pixel
    and clipped at the border (DeVries & Taylor, 2017). Draws from torch's generator, which
    :class:`SeededTransform` seeds per sample."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, height, width = image.shape
        top = int(torch.randint(height, ())) - self.size // 2
        left = int(torch.randint(width, ())) - self.size // 2
        image = image.clone()
        image[:, max(top, 0):max(top + self.size, 0), max(left, 0):max(left + self.size, 0)] = 0.0
        return image


def build_transform(config: DataConfig, train: bool) -> Callable[[Any], torch.Tensor]:
    """PIL image -> normalised tensor, with ``data.augment`` and ``data.cutout`` for training."""
    from torchvision import transforms

    steps: list[Callable[[Any], Any]] = []
    if train and config.augment == "flip_crop":
        steps.append(transforms.RandomCrop(32, padding=4))
    if train and config.augment in ("flip", "flip_crop"):
        steps.append(transforms.RandomHorizontalFlip())
    mean, std = config.normalization()
    steps += [transforms.ToTensor(), transforms.Normalize(list(mean), list(std))]
    if train and config.cutout:
        steps.append(Cutout(config.cutout))
    return transforms.Compose(steps)


def _cut(config: DataConfig, seed: int, source: str) -> dict[str, tuple[SeededTransform, list[str]]]:
    """The splits cut from the source split ``source`` (:func:`cifarlab.data.path.cut`), each transformed as the
    model sees it: random per sample for training with any augmentation or cutout; test and validation images are
    never augmented. The labels the validation split is stratified by are read without decoding images."""
    base, classes = open_source(config, source)
    random = config.augment != "none" or bool(config.cutout)
    found = {}
    for split, indices in cut(config, source, size(base), lambda: labels_of(base), classes).items():
        train = split == "train"
        found[split] = (SeededTransform(base if indices is None else Subset(base, indices),
                                        build_transform(config, train), seed, random=train and random), classes)
    return found


class ImageData(DataPath):
    """Samples are transformed one at a time in the loader's workers; batches arrive normalised."""

    train: SeededTransform
    test: SeededTransform
    val: Optional[SeededTransform]

    @classmethod
    def build(cls, config: DataConfig, seed: int, warn: Callable[[str], None], device: Optional[torch.device] = None,
              progress: Optional[Progress] = None) -> DataPath:
        # Each source split opened once (its labels read once): the validation images are the training split's.
        found = {split: part for source in ("train", "test") for split, part in _cut(config, seed, source).items()}
        return cls.of_splits(config, seed, *(found[split] for split in splits(config)))

    @classmethod
    def split(cls, config: DataConfig, seed: int, split: str, warn: Callable[[str], None],
              device: Optional[torch.device]) -> tuple[Dataset, list[str]]:
        return _cut(config, seed, source_of(split))[split]

    def held_out(self) -> Optional[list[int]]:
        held = None if self.val is None else self.val.base
        return list(held.indices) if isinstance(held, Subset) else None

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.train.set_epoch(epoch)

    def to_model(self, batch: Any, train: bool) -> Batch:
        return batch[0], batch[1]  # the workers augmented and normalised each image

    def loader_options(self) -> dict[str, Any]:
        # Persistent workers: no new worker processes (and no dataset copies) every epoch; SeededTransform's
        # shared epoch keeps each sample's augmentation a function of (seed, epoch, index). Pinned batches are
        # copied to the GPU without a host sync (the accelerator's non_blocking).
        workers = self.config.num_workers
        return {"num_workers": workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": workers > 0}

    def sample(self, train: bool, count: int, augmented: bool = True) -> Batch:
        dataset = self.train if train else self.test
        indices = spread(len(dataset), count)
        if train and not augmented:
            plain = build_transform(self.config, train=False)
            samples = [(plain(image), label) for image, label in (dataset.base[i] for i in indices)]
        else:
            samples = [dataset[i] for i in indices]
        return torch.stack([image for image, _ in samples]), torch.tensor([label for _, label in samples])
