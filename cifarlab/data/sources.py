"""Where images come from: torchvision's CIFAR sets, an image folder listed in ImageFolder's order, or FakeData, as
datasets of (PIL image, label); the one-line errors for a missing set or an unreadable image; and a key of the source
files that changes when they do (the tensor cache's key, and the run record's). torchvision is imported only where
it is used (its import pulls in torch._dynamo, seconds of start-up)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from cifarlab.config import CIFAR10_CLASSES, DataConfig
from cifarlab.data.classes import CIFAR100_CLASSES, fake_classes
from cifarlab.errors import UsageError

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
    ``cifarlab.data.sources.UnreadableImage: <message>`` (torch.utils.data's ExceptionWrapper.reraise): the
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
        # data.train_size is the training images used: the held-out validation images come on top.
        size = (config.train_size or 50_000) + config.val_size if split == "train" else (config.test_size or 10_000)
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


def labels_of(dataset: Dataset) -> torch.Tensor:
    """The labels of a source split (:func:`open_source`) in index order, without decoding its images where it can:
    an image folder's from its file list, torchvision's CIFAR's from its targets, FakeData's drawn as FakeData draws
    them (any other dataset's: by loading every sample)."""
    if isinstance(dataset, ImageFiles):
        return torch.tensor([label for _, label in dataset.samples], dtype=torch.long)
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.long)
    found = _fake_labels(dataset)
    if found is not None:
        return found
    return torch.tensor([int(dataset[index][1]) for index in range(len(dataset))], dtype=torch.long)  # type: ignore[arg-type]


def _fake_labels(dataset: Dataset) -> Optional[torch.Tensor]:
    """FakeData's labels, without its images' conversion to PIL (a 50,000-image split: about a second instead of
    ten). FakeData draws image ``i`` and then its label from torch's generator seeded with ``i + random_offset``;
    here a generator of its own makes the same draws. FakeData's API gives labels only with the images: bypassed
    where it still behaves so (the first and last labels agree with FakeData's own, else every sample is loaded)."""
    from torchvision.datasets import FakeData

    if not isinstance(dataset, FakeData):
        return None
    generator = torch.Generator()
    labels = torch.empty(len(dataset), dtype=torch.long)
    for index in range(len(dataset)):
        generator.manual_seed(index + dataset.random_offset)
        torch.randn(*dataset.image_size, generator=generator)  # the image's draws come first
        labels[index] = torch.randint(0, dataset.num_classes, (1,), generator=generator)[0]
    if len(dataset) and any(int(labels[index]) != dataset[index][1] for index in (0, len(dataset) - 1)):
        return torch.tensor([dataset[index][1] for index in range(len(dataset))], dtype=torch.long)
    return labels


def missing_cifar(config: DataConfig, cifar: TorchvisionCifar, error: Exception) -> UsageError:
    """The one-line error for a CIFAR set torchvision can neither find nor download."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else "no reason given"
    why = "is not there" if not config.download else f"could not be downloaded ({type(error).__name__}: {reason})"
    return UsageError(
        f"data.name={config.name}: {cifar.title} in data.root={config.root} {why}; point data.root at a folder "
        f"holding {cifar.folder}, or use an image-folder copy (data.name=imagefolder data.root=PATH with train/ "
        f"and test/) or synthetic data (data.name=fake)"
    )


def fingerprint(config: DataConfig, split: str) -> Optional[tuple[str, list[str]]]:
    """(a key that changes when the source files change, class names), without opening the dataset;
    None when there is nothing on disk to key (fake data, a CIFAR set not downloaded yet)."""
    digest = hashlib.sha256()
    cifar = CIFARS.get(config.name)
    if config.name == "imagefolder":
        classes, samples = list_image_folder(config, split)
        for path, label in samples:
            stat = os.stat(path)
            digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    elif cifar is not None and (Path(config.root) / cifar.folder).is_dir():
        classes = list(cifar.classes)
        for file in sorted((Path(config.root) / cifar.folder).iterdir()):
            stat = file.stat()
            digest.update(f"{file.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        digest.update(split.encode())
    else:
        return None
    return digest.hexdigest()[:16], classes
