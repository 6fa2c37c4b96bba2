"""The data path: CIFAR-10, CIFAR-100, an image folder, or FakeData, as batches ready for the model.

Two implementations share one protocol, :class:`DataPath`: ``data.loader=tensor``
(:mod:`cifarlab.tensor_data`: decoded once, kept in memory, augmented a batch at a time) and
``data.loader=torchvision`` (:mod:`cifarlab.image_data`: decoded and augmented per image in
DataLoader workers). Either way the loop asks for ``train_batches(epoch, skip)`` and ``test_batches()``
and gets (normalised images, labels) on the training device.

Augmentation randomness is a pure function of (train.seed, epoch, sample index) on both paths, whichever
process or worker loads a sample: one run gives the same numbers on 1 or N processes, with any
``data.num_workers``, and after a mid-epoch resume.

torchvision is imported only where it is used (its import pulls in torch._dynamo, seconds of start-up):
the tensor path reads an image folder, or any decoded cache, without it.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from cifarlab.classes import CIFAR100_CLASSES, fake_classes
from cifarlab.config import CIFAR10_CLASSES, DataConfig
from cifarlab.errors import UsageError

Batch = tuple[torch.Tensor, torch.Tensor]
"""(images, labels): normalised float images (N, 3, H, W) and integer labels, on the batch's device."""

# Fixed seed for choosing data.train_size / data.test_size subsets: the subset is a property of
# the data config, not of train.seed, so runs with different seeds see the same images.
_SUBSET_SEED = 1234
# FakeData seeds image i with i + random_offset; the test split must not repeat training images.
_FAKE_TEST_OFFSET = 10_000_000
# torchvision's ImageFolder extensions: both paths list an image folder the same way.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class TorchvisionCifar:
    """A CIFAR set that torchvision reads (and downloads) in its pickled on-disk layout."""

    title: str
    """As people write it, for messages."""
    dataset: str
    """The torchvision.datasets class."""
    folder: str
    """torchvision's folder under data.root."""
    classes: tuple[str, ...]
    """Class names in label order, as the set's meta file lists them."""


CIFARS = {
    "cifar10": TorchvisionCifar("CIFAR-10", "CIFAR10", "cifar-10-batches-py", CIFAR10_CLASSES),
    "cifar100": TorchvisionCifar("CIFAR-100", "CIFAR100", "cifar-100-python", CIFAR100_CLASSES),
}


class DataPath(ABC):
    """Both splits of a dataset and their loaders; yields batches ready for the model.

    Subclasses say how a loader batch becomes (images, labels) (:meth:`to_model`), how their loaders
    collate (:meth:`loader_options`) and how to draw samples for picture grids (:meth:`sample`).
    The training epoch is set in one place, :meth:`set_epoch`, which :meth:`train_batches` calls.
    """

    def __init__(self, config: DataConfig, seed: int, classes: Sequence[str], train: Dataset, test: Dataset) -> None:
        self.config = config
        self.seed = seed
        self.classes: tuple[str, ...] = tuple(classes)
        """Class names by label index, so every report says 'cat', not 3."""
        self.train = train
        self.test = test
        self.epoch = 0
        self._train_loader: Optional[DataLoader] = None
        self._test_loader: Optional[DataLoader] = None
        self._skip: Callable[[DataLoader, int], Any] = lambda loader, count: loader

    @classmethod
    def build(cls, config: DataConfig, seed: int, warn: Callable[[str], None],
              device: Optional[torch.device] = None) -> DataPath:
        """Both splits of ``data.name`` on this path (see :meth:`split`), with the same classes."""
        train, classes = cls.split(config, seed, "train", warn, device)
        test, test_classes = cls.split(config, seed, "test", warn, device)
        _check_same_classes(config, classes, test_classes)
        _check_class_count(config, classes)
        return cls(config, seed, classes, train, test)

    @classmethod
    @abstractmethod
    def split(cls, config: DataConfig, seed: int, split: str, warn: Callable[[str], None],
              device: Optional[torch.device]) -> tuple[Dataset, list[str]]:
        """One split as this path's dataset (a subset when data.train_size / data.test_size say so), and the
        class names. ``device``: where the tensor path keeps the images."""

    @abstractmethod
    def to_model(self, batch: Any, train: bool) -> Batch:
        """A loader batch as (normalised images, labels)."""

    @abstractmethod
    def loader_options(self) -> dict[str, Any]:
        """DataLoader options of this path (workers, collate)."""

    @abstractmethod
    def sample(self, train: bool, count: int, augmented: bool = True) -> Batch:
        """``count`` normalised samples spread evenly over a split, on the CPU, as the model sees them at the
        current epoch (training images augmented unless not ``augmented``). Evenly spread: image folders are
        sorted by class, the first ones are all airplanes."""

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation the training samples get (and whose order the training loader takes)."""
        self.epoch = epoch
        if self._train_loader is not None and hasattr(self._train_loader, "set_epoch"):
            self._train_loader.set_epoch(epoch)

    def source_keys(self) -> Optional[dict[str, str]]:
        """The tensor cache's keys of the files each split comes from (they change when the files do), for the
        run record; None for fake data and a dataset not on disk."""
        from cifarlab.tensor_data import fingerprint

        found = {split: fingerprint(self.config, split) for split in ("train", "test")}
        return {split: key[0] for split, key in found.items() if key is not None} or None

    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.sample(train=False, count=1)[0].shape[1:]
        return channels, height, width

    def loaders(self, batch_size: Optional[int], eval_batch_size: int) -> tuple[Optional[DataLoader], DataLoader]:
        """Loaders over *global* batches (Accelerate, split_batches=True, slices them per process); no
        training loader when ``batch_size`` is None (evaluation only).

        Training drops the last partial batch so every step has the same size at any process count;
        evaluation keeps every image (gather_for_metrics removes Accelerate's padding).
        """
        train = None
        if batch_size is not None:
            if size(self.train) < batch_size:
                raise UsageError(f"train.batch_size={batch_size} exceeds the {size(self.train)} training images; "
                                 f"lower train.batch_size or raise data.train_size")
            train = DataLoader(self.train, batch_size=batch_size, shuffle=True, drop_last=True, **self.loader_options())
        test = DataLoader(self.test, batch_size=eval_batch_size, shuffle=False, drop_last=False,
                          **self.loader_options())
        return train, test

    def prepare(self, accelerator: Any, batch_size: Optional[int], eval_batch_size: int) -> int:
        """Build the loaders and hand them to ``accelerator``; return the training batches per epoch
        (global batches, as counted before Accelerate shards them; 0 without a training loader)."""
        train, test = self.loaders(batch_size, eval_batch_size)
        steps = len(train) if train is not None else 0
        self._test_loader = accelerator.prepare(test)
        if train is not None:
            self._train_loader = accelerator.prepare(train)
        self._skip = accelerator.skip_first_batches
        return steps

    def train_batches(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The training batches of ``epoch``, less the first ``skip`` (already taken before a resume)."""
        assert self._train_loader is not None, "prepare() with a batch_size first"
        self.set_epoch(epoch)
        loader = self._skip(self._train_loader, skip) if skip else self._train_loader
        for batch in loader:
            yield self.to_model(batch, train=True)

    def test_batches(self) -> Iterator[Batch]:
        assert self._test_loader is not None, "prepare() first"
        for batch in self._test_loader:
            yield self.to_model(batch, train=False)


def size(dataset: Dataset) -> int:
    """``len(dataset)``: torch's Dataset type declares no ``__len__``, though every map-style dataset has one."""
    return len(dataset)  # type: ignore[arg-type]


def spread(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them when there are fewer)."""
    return [i * total // min(count, total) for i in range(min(count, total))]


def subset_indices(total: int, size: Optional[int], key: str) -> Optional[list[int]]:
    """Indices of the data.train_size / data.test_size subset; None for all."""
    if size is None or size == total:
        return None
    if size > total:
        raise UsageError(f"{key}={size} exceeds the {total} images available; lower it or set {key}=null (all)")
    # Random, not the first N: image folders are sorted by class.
    order = torch.randperm(total, generator=torch.Generator().manual_seed(_SUBSET_SEED))
    return sorted(order[:size].tolist())


# --- sources ------------------------------------------------------------------------------------------

def split_size(config: DataConfig, split: str) -> Optional[int]:
    return config.train_size if split == "train" else config.test_size


def list_image_folder(config: DataConfig, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(file, label)]) of ``<data.root>/<split>``, in ImageFolder's order: classes sorted,
    then each class folder walked in sorted order."""
    folder = Path(config.root) / split
    fix = "set data.root to a folder holding train/<class>/*.jpg and test/<class>/*.jpg"
    if not folder.is_dir():
        raise UsageError(f"data.name=imagefolder: {folder} does not exist; {fix}")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        before = len(samples)
        for root, _, files in sorted(os.walk(folder / name, followlinks=True)):
            samples += [(os.path.join(root, file), label) for file in sorted(files)
                        if file.lower().endswith(IMAGE_EXTENSIONS)]
        if len(samples) == before:
            raise UsageError(f"data.name=imagefolder: {folder / name} holds no images; {fix}")
    if not classes:
        raise UsageError(f"data.name=imagefolder: {folder} holds no images (no class folders); {fix}")
    return classes, samples


class UnreadableImage(UsageError):
    """An image file of the data that cannot be decoded; the message names it and says why.

    Raised in a DataLoader worker, it reaches the main process re-made by torch as
    ``UnreadableImage(text)``, ``text`` being the worker's whole formatted traceback, whose last line is
    ``cifarlab.data.UnreadableImage: <message>`` (torch.utils.data's ExceptionWrapper.reraise): the
    constructor keeps only that message, so the user still reads one line.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if "\n" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip().splitlines()[0]
        super().__init__(message)


def image_error(path: str, error: Exception) -> UnreadableImage:
    """The one-line error for an image file PIL cannot read (``error``: what PIL raised)."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    reason = reason.replace(f" {path!r}", "")  # PIL repeats the path: "cannot identify image file '<path>'"
    return UnreadableImage(f"cannot read image {path} ({reason}); remove or replace it")


class ImageFiles(Dataset):
    """Image files as (RGB PIL image, label), as torchvision's ImageFolder loads them; a file PIL cannot read
    raises :class:`UnreadableImage`."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB"), label  # convert decodes the whole file: a truncated one fails here
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise image_error(path, error) from None


def open_source(config: DataConfig, split: str) -> tuple[Dataset, list[str]]:
    """The ``split`` of ``data.name`` as a dataset of (PIL image, label), and its class names."""
    if config.name == "imagefolder":
        classes, samples = list_image_folder(config, split)
        return ImageFiles(samples), classes
    from torchvision import datasets  # only here: see the module docstring

    if config.name == "fake":
        size = (config.train_size or 50_000) if split == "train" else (config.test_size or 10_000)
        names = fake_classes(config.class_count() or len(CIFAR10_CLASSES))
        fake = datasets.FakeData(size=size, image_size=(3, config.image_size, config.image_size),
                                 num_classes=len(names), random_offset=0 if split == "train" else _FAKE_TEST_OFFSET)
        return fake, list(names)
    cifar = CIFARS[config.name]
    try:
        found = getattr(datasets, cifar.dataset)(config.root, train=split == "train", download=config.download)
    except (OSError, RuntimeError) as error:
        raise missing_cifar(config, cifar, error) from None
    return found, list(found.classes)


def missing_cifar(config: DataConfig, cifar: TorchvisionCifar, error: Exception) -> UsageError:
    """The one-line error for a CIFAR set torchvision can neither find nor download."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else "no reason given"
    why = "is not there" if not config.download else f"could not be downloaded ({type(error).__name__}: {reason})"
    return UsageError(
        f"data.name={config.name}: {cifar.title} in data.root={config.root} {why}; point data.root at a folder "
        f"holding {cifar.folder}, or use an image-folder copy (data.name=imagefolder data.root=PATH with train/ "
        f"and test/) or synthetic data (data.name=fake)"
    )


def _check_same_classes(config: DataConfig, train: Sequence[str], test: Sequence[str]) -> None:
    if list(train) != list(test):
        raise UsageError(f"data.root={config.root}: train classes {list(train)} differ from test classes "
                         f"{list(test)}; both splits need the same class folders")


def _check_class_count(config: DataConfig, classes: Sequence[str]) -> None:
    """data.num_classes, where set, is a check of what the data holds (the config checks the CIFAR sets)."""
    if config.num_classes is not None and config.num_classes != len(classes):
        raise UsageError(f"data.num_classes={config.num_classes} but data.root={config.root} holds {len(classes)} "
                         f"classes; set data.num_classes={len(classes)} or null")


def build_data(config: DataConfig, seed: int,
               main_process_first: Optional[contextlib.AbstractContextManager[Any]] = None,
               warn: Callable[[str], None] = lambda message: None,
               device: Optional[torch.device] = None) -> DataPath:
    """Both splits on the path ``data.loader`` names. ``main_process_first`` lets rank 0 download (and, for
    the tensor path, decode and cache) before the others read. ``device``: where the tensor path keeps the
    images (the training device; None = CPU memory)."""
    from cifarlab import image_data, tensor_data

    paths: dict[str, Callable[..., DataPath]] = {"tensor": tensor_data.TensorData.build,
                                                  "torchvision": image_data.ImageData.build}
    with main_process_first or contextlib.nullcontext():
        return paths[config.loader](config, seed, warn=warn, device=device)
