"""Datasets and loaders: CIFAR-10, an image folder, or FakeData, with class names attached.

Augmentation randomness is a pure function of (train.seed, epoch, sample index): each sample
draws its crop and flip from its own seeded generator state, whichever process or worker loads
it. That is what lets one run give the same numbers on 1 or N processes, with any
``data.num_workers``, and after a mid-epoch resume.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from cifarlab.config import CIFAR10_CLASSES, DataConfig
from cifarlab import tensor_data
from cifarlab.errors import UsageError
from cifarlab.tensor_data import TensorImages

# Fixed seed for choosing data.train_size / data.test_size subsets: the subset is a property of
# the data config, not of train.seed, so runs with different seeds see the same images.
_SUBSET_SEED = 1234
# FakeData seeds image i with i + random_offset; the test split must not repeat training images.
_FAKE_TEST_OFFSET = 10_000_000


class SeededTransform(Dataset):
    """Applies ``transform`` to ``base[index]`` under an RNG seeded by (seed, epoch, index).

    torchvision's random transforms draw from torch's global generator, so the draw is
    wrapped in ``fork_rng``: the caller's generator state is left untouched.
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor], seed: int, random: bool) -> None:
        self.base = base
        self.transform = transform
        self.seed = seed
        self.random = random
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        # Set before each epoch's iterator is created: workers receive a copy of this object then.
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        if not self.random:
            return self.transform(image), int(label)
        with torch.random.fork_rng(devices=[]):
            # A tuple of ints hashes the same in every process (no hash randomisation for ints).
            torch.manual_seed(hash((self.seed, self.epoch, index)) & 0xFFFF_FFFF_FFFF)
            return self.transform(image), int(label)


@dataclass
class Datasets:
    train: SeededTransform | TensorImages
    test: SeededTransform | TensorImages
    classes: tuple[str, ...]
    """Class names by label index, so every report says 'cat', not 3."""
    config: DataConfig
    seed: int

    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.test[0][0].shape
        return channels, height, width

    def to_model(self, batch: Any, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch as (normalised images, labels). The tensor path augments (training) and
        normalises here, on the batch's device; the torchvision path did both in its workers."""
        if not isinstance(self.train, TensorImages):
            return batch[0], batch[1]
        images, labels, indices = batch
        if train and self.config.augment != "none":
            images = tensor_data.augment(images, indices, self.seed, self.train.epoch, self.config.augment)
        images = tensor_data.normalize(images, self.config.mean, self.config.std)
        if train and self.config.cutout:
            images = tensor_data.cutout(images, indices, self.seed, self.train.epoch, self.config.cutout)
        return images, labels


def sample_images(data: Datasets, train: bool, count: int, augmented: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` normalised samples spread evenly over a split, on the CPU: as the model sees them (training
    images augmented unless not ``augmented``). Evenly spread: image folders are sorted by class, the
    first ones are all airplanes."""
    dataset = data.train if train else data.test
    total = len(dataset)
    indices = [i * total // min(count, total) for i in range(min(count, total))]
    if isinstance(dataset, TensorImages):
        images, labels = data.to_model(dataset.__getitems__(indices), train and augmented)
        return images.cpu(), labels.cpu()
    if train and not augmented:
        plain = build_transform(data.config, train=False)
        samples = [(plain(image), label) for image, label in (dataset.base[i] for i in indices)]
    else:
        samples = [dataset[i] for i in indices]
    return torch.stack([image for image, _ in samples]), torch.tensor([label for _, label in samples])


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
    steps: list[Callable[[Any], Any]] = []
    if train and config.augment == "flip_crop":
        steps.append(transforms.RandomCrop(32, padding=4))
    if train and config.augment in ("flip", "flip_crop"):
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(list(config.mean), list(config.std))]
    if train and config.cutout:
        steps.append(Cutout(config.cutout))
    return transforms.Compose(steps)


def _subset_indices(total: int, size: int | None, key: str) -> Optional[list[int]]:
    """Indices of the data.train_size / data.test_size subset; None for all."""
    if size is None or size == total:
        return None
    if size > total:
        raise UsageError(f"{key}={size} exceeds the {total} images available; lower it or set {key}=null (all)")
    # Random, not the first N: image folders are sorted by class.
    order = torch.randperm(total, generator=torch.Generator().manual_seed(_SUBSET_SEED))
    return sorted(order[:size].tolist())


def _subset(base: Dataset, size: int | None, key: str) -> Dataset:
    indices = _subset_indices(len(base), size, key)  # type: ignore[arg-type]
    return base if indices is None else Subset(base, indices)


def _in_memory(base: Dataset, config: DataConfig, split: str, size: int | None, key: str,
               warn: Callable[[str], None], device: Optional[torch.device]) -> TensorImages:
    images, labels = tensor_data.load_tensors(base, config.root, split, warn)
    indices = _subset_indices(len(labels), size, key)
    if indices is not None:
        images, labels = images[indices], labels[indices]
    if device is not None:
        # On a GPU the whole uint8 set (150 MB for CIFAR-10's training split) lives on the device: batches
        # are sliced and augmented there, with no host-to-device copy per step.
        images, labels = images.to(device), labels.to(device)
    return TensorImages(images, labels)


def _cifar10(config: DataConfig, train: bool) -> tuple[Dataset, Sequence[str]]:
    try:
        dataset = datasets.CIFAR10(config.root, train=train, download=config.download)
    except (OSError, RuntimeError) as error:
        why = "is not there" if not config.download else f"could not be downloaded ({type(error).__name__}: {error})"
        raise UsageError(
            f"data.name=cifar10: CIFAR-10 in data.root={config.root} {why}; point data.root at a folder holding "
            f"cifar-10-batches-py, or use an image-folder copy (data.name=imagefolder data.root=PATH with train/ "
            f"and test/) or synthetic data (data.name=fake)"
        ) from None
    return dataset, dataset.classes


def _imagefolder(config: DataConfig, train: bool) -> tuple[Dataset, Sequence[str]]:
    split = Path(config.root) / ("train" if train else "test")
    fix = "set data.root to a folder holding train/<class>/*.jpg and test/<class>/*.jpg"
    if not split.is_dir():
        raise UsageError(f"data.name=imagefolder: {split} does not exist; {fix}")
    try:
        dataset = datasets.ImageFolder(str(split))
    except (FileNotFoundError, RuntimeError) as error:
        raise UsageError(f"data.name=imagefolder: {split} holds no images ({error}); {fix}") from None
    return dataset, dataset.classes


def _fake(config: DataConfig, train: bool) -> tuple[Dataset, Sequence[str]]:
    size = (config.train_size or 50_000) if train else (config.test_size or 10_000)
    dataset = datasets.FakeData(
        size=size,
        image_size=(3, config.image_size, config.image_size),
        num_classes=len(CIFAR10_CLASSES),
        random_offset=0 if train else _FAKE_TEST_OFFSET,
    )
    return dataset, CIFAR10_CLASSES


_SOURCES = {"cifar10": _cifar10, "imagefolder": _imagefolder, "fake": _fake}


def build_datasets(config: DataConfig, seed: int, main_process_first: ContextManager[Any] | None = None,
                   warn: Callable[[str], None] = lambda message: None,
                   device: Optional[torch.device] = None) -> Datasets:
    """Both splits, ready for loaders. ``main_process_first`` lets rank 0 download (and, for the tensor
    path, decode and cache) before the others read. ``device``: where the tensor path keeps the images
    (the training device; None = CPU memory)."""
    source = _SOURCES[config.name]
    with main_process_first or contextlib.nullcontext():
        train_base, classes = source(config, True)
        test_base, test_classes = source(config, False)
        if list(classes) != list(test_classes):
            raise UsageError(
                f"data.root={config.root}: train classes {list(classes)} differ from test classes "
                f"{list(test_classes)}; both splits need the same class folders"
            )
        if config.loader == "tensor":
            train: SeededTransform | TensorImages = _in_memory(train_base, config, "train", config.train_size,
                                                               "data.train_size", warn, device)
            test: SeededTransform | TensorImages = _in_memory(test_base, config, "test", config.test_size,
                                                              "data.test_size", warn, device)
            return Datasets(train=train, test=test, classes=tuple(classes), config=config, seed=seed)
    train = SeededTransform(_subset(train_base, config.train_size, "data.train_size"), build_transform(config, True),
                            seed, random=config.augment != "none")
    test = SeededTransform(_subset(test_base, config.test_size, "data.test_size"), build_transform(config, False),
                           seed, random=False)
    return Datasets(train=train, test=test, classes=tuple(classes), config=config, seed=seed)


def build_loaders(data: Datasets, batch_size: int, eval_batch_size: int) -> tuple[DataLoader, DataLoader]:
    """Loaders over *global* batches: Accelerate (split_batches=True) slices them per process.

    Training drops the last partial batch so every step has the same size at any process
    count; evaluation keeps every image (gather_for_metrics removes Accelerate's padding).
    """
    if len(data.train) < batch_size:
        raise UsageError(
            f"train.batch_size={batch_size} exceeds the {len(data.train)} training images; lower train.batch_size "
            f"or raise data.train_size"
        )
    train = DataLoader(data.train, batch_size=batch_size, shuffle=True, drop_last=True, **_loader_options(data))
    return train, build_test_loader(data, eval_batch_size)


def build_test_loader(data: Datasets, eval_batch_size: int) -> DataLoader:
    return DataLoader(data.test, batch_size=eval_batch_size, shuffle=False, drop_last=False, **_loader_options(data))


def _loader_options(data: Datasets) -> dict[str, Any]:
    if isinstance(data.train, TensorImages):
        # Whole batches are sliced out of memory in the training process: workers would only copy them.
        return {"num_workers": 0, "collate_fn": tensor_data.batch_as_is}
    return {"num_workers": data.config.num_workers, "pin_memory": torch.cuda.is_available()}
