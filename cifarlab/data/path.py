"""The data-path protocol, :class:`DataPath`, that both implementations share (``data.loader=tensor``:
:mod:`cifarlab.data.tensors`; ``data.loader=torchvision``: :mod:`cifarlab.data.images`), and the helpers both use.
Either way the loop asks for ``train_batches(epoch, skip)``, ``test_batches()`` and, with a validation split
(``data.val_size``), ``val_batches()``, and gets (normalised images, labels) on the training device. This module
does not know its implementations: :func:`cifarlab.data.build_data` picks one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Optional, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from cifarlab.config import DataConfig
from cifarlab.data import validation
from cifarlab.data.mixing import mix
from cifarlab.data.sources import fingerprint
from cifarlab.errors import UsageError

Batch = tuple[torch.Tensor, torch.Tensor]
"""(images, labels): normalised float images (N, 3, H, W) and integer labels, on the batch's device; with MixUp or
CutMix (data.mixup, data.cutmix) training batches carry soft targets (N, classes) instead of labels."""

# Fixed seed for choosing data.train_size / data.test_size subsets: the subset is a property of
# the data config, not of train.seed, so runs with different seeds see the same images.
_SUBSET_SEED = 1234


class Progress(Protocol):
    """Where the data path reports long one-off work (decoding an image folder into its cache: 60,000 JPEGs take
    12-18 s on 2 cores). The caller passes it down (the training loop: its console, on the main process), so this
    wing prints nothing of its own and imports nothing above it."""

    def progress(self, title: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
        """Work on ``total`` items: what the context gives is called with the count of items just done."""

    def log(self, message: str) -> None:
        """One line when the work is done."""


class DataPath(ABC):
    """The splits of a dataset (training, test and, with ``data.val_size``, validation) and their loaders; yields
    batches ready for the model.

    Subclasses say how a loader batch becomes (images, labels) (:meth:`to_model`), how their loaders
    collate (:meth:`loader_options`) and how to draw samples for picture grids (:meth:`sample`).
    The training epoch is set in one place, :meth:`set_epoch`, which :meth:`train_batches` calls.
    """

    def __init__(self, config: DataConfig, seed: int, classes: Sequence[str], train: Dataset, test: Dataset,
                 val: Optional[Dataset] = None) -> None:
        self.config = config
        self.seed = seed
        self.classes: tuple[str, ...] = tuple(classes)
        """Class names by label index, so every report says 'cat', not 3."""
        self.train = train
        self.test = test
        self.val = val
        """The validation images (data.val_size of the source's training split, never augmented); None without."""
        self.epoch = 0
        self._train_loader: Optional[DataLoader] = None
        self._test_loader: Optional[DataLoader] = None
        self._val_loader: Optional[DataLoader] = None
        self._skip: Callable[[DataLoader, int], Any] = lambda loader, count: loader

    @classmethod
    def build(cls, config: DataConfig, seed: int, warn: Callable[[str], None], device: Optional[torch.device] = None,
              progress: Optional[Progress] = None) -> DataPath:
        """Every split of ``data.name`` on this path (see :meth:`split`), with the same classes. ``progress``: where
        one-off work is reported (a path that has none, as the per-image one, ignores it). A path that can share work
        between the splits (read the training source once for the training and the validation images) overrides it."""
        return cls.of_splits(config, seed, *(cls.split(config, seed, split, warn, device) for split in splits(config)))

    @classmethod
    def of_splits(cls, config: DataConfig, seed: int, train: tuple[Dataset, Sequence[str]],
                  test: tuple[Dataset, Sequence[str]], val: Optional[tuple[Dataset, Sequence[str]]] = None) -> DataPath:
        """The data path of the splits as :meth:`split` gives them, checked to have the same classes."""
        _check_same_classes(config, train[1], test[1])
        _check_class_count(config, train[1])
        return cls(config, seed, train[1], train[0], test[0], None if val is None else val[0])

    @classmethod
    @abstractmethod
    def split(cls, config: DataConfig, seed: int, split: str, warn: Callable[[str], None],
              device: Optional[torch.device]) -> tuple[Dataset, list[str]]:
        """One split ("train", "test", or "val" where data.val_size > 0) as this path's dataset, and the class
        names (:func:`cut`: the validation images are held out of the source's training split first, the training
        images are what is left). ``device``: where the tensor path keeps the images."""

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
        """The tensor cache's keys of the files each split comes from (they change when the files do), and with a
        validation split ``val``, a key of the images it holds out (:func:`cifarlab.data.validation.digest`), for
        the run record; None for fake data and a dataset not on disk without a validation split."""
        found = {split: fingerprint(self.config, split) for split in ("train", "test")}
        return self.with_val_key({split: key[0] for split, key in found.items() if key is not None})

    def with_val_key(self, keys: dict[str, str]) -> Optional[dict[str, str]]:
        """``keys`` (the source files' keys by split), with a validation split its ``val`` key; None for none."""
        held = self.held_out()
        if held is not None:
            keys["val"] = validation.digest(held, keys.get("train"))
        return keys or None

    def held_out(self) -> Optional[Sequence[int]]:
        """The indices of the validation images in the source's training split; None without a validation split."""
        return None

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
        return train, self.evaluation_loader(self.test, eval_batch_size)

    def evaluation_loader(self, dataset: Dataset, eval_batch_size: int) -> DataLoader:
        """A loader over every image of ``dataset`` in order (the test or the validation images)."""
        return DataLoader(dataset, batch_size=eval_batch_size, shuffle=False, drop_last=False, **self.loader_options())

    def prepare(self, accelerator: Any, batch_size: Optional[int], eval_batch_size: int) -> int:
        """Build the loaders and hand them to ``accelerator``; return the training batches per epoch
        (global batches, as counted before Accelerate shards them; 0 without a training loader)."""
        train, test = self.loaders(batch_size, eval_batch_size)
        steps = len(train) if train is not None else 0
        self._test_loader = accelerator.prepare(test)
        if self.val is not None:  # as the test loader: every image, in order, not augmented
            self._val_loader = accelerator.prepare(self.evaluation_loader(self.val, eval_batch_size))
        if train is not None:
            self._train_loader = accelerator.prepare(train)
        self._skip = accelerator.skip_first_batches
        return steps

    def train_batches(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The training batches of ``epoch``, less the first ``skip`` (already taken before a resume)."""
        assert self._train_loader is not None, "prepare() with a batch_size first"
        self.set_epoch(epoch)
        if skip >= len(self._train_loader):  # a resume after the epoch's last batch: Accelerate 1.1's
            return  # skip_first_batches then yields one None batch instead of none (test_properties_data found it)
        loader = self._skip(self._train_loader, skip) if skip else self._train_loader
        config = self.config
        if not (config.mixup or config.cutmix):
            for batch in loader:
                yield self.to_model(batch, train=True)
            return
        for batch in loader:  # both paths' batches carry the sample indices third
            images, labels = self.to_model(batch, train=True)
            yield mix(images, labels, batch[2], self.seed, self.epoch, config.mixup, config.cutmix, len(self.classes))

    def test_batches(self) -> Iterator[Batch]:
        assert self._test_loader is not None, "prepare() first"
        for batch in self._test_loader:
            yield self.to_model(batch, train=False)

    def val_batches(self) -> Iterator[Batch]:
        """The validation images' batches, as :meth:`test_batches` (never augmented)."""
        assert self._val_loader is not None, "prepare() with a validation split (data.val_size > 0) first"
        for batch in self._val_loader:
            yield self.to_model(batch, train=False)


def size(dataset: Dataset) -> int:
    """``len(dataset)``: torch's Dataset type declares no ``__len__``, though every map-style dataset has one."""
    return len(dataset)  # type: ignore[arg-type]


def spread(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (all of them when there are fewer)."""
    return [i * total // min(count, total) for i in range(min(count, total))]


def splits(config: DataConfig) -> tuple[str, ...]:
    """The splits a data path has, in :meth:`DataPath.of_splits`' order: "val" only with data.val_size > 0."""
    return ("train", "test", "val") if config.val_size else ("train", "test")


def source_of(split: str) -> str:
    """The source split a split's images come from: the validation images are the training split's."""
    return "test" if split == "test" else "train"


def cut(config: DataConfig, source: str, total: int, labels: Callable[[], validation.Labels],
        classes: Sequence[str]) -> dict[str, Optional[list[int]]]:
    """The splits cut from the source's ``source`` split ("train" or "test") of ``total`` images, as indices into
    it (None: all of them). From "test": the test images, a fixed random subset where data.test_size says so. From
    "train": with data.val_size > 0 the validation images, held out first (:func:`cifarlab.data.validation.held_out`;
    ``labels`` gives the split's labels, asked for only then), and the training images, a fixed random subset of
    what is left where data.train_size says so: the validation set does not change with data.train_size."""
    if source == "test":
        return {"test": subset_indices(total, config.test_size, "data.test_size")}
    if not config.val_size:
        return {"train": subset_indices(total, config.train_size, "data.train_size")}
    val = validation.held_out(labels(), config.val_size, config.val_seed, classes)
    left = validation.complement(total, val)
    chosen = subset_indices(len(left), config.train_size, "data.train_size", held=config.val_size)
    return {"train": left if chosen is None else [left[index] for index in chosen], "val": val}


def subset_indices(total: int, size: Optional[int], key: str, held: int = 0) -> Optional[list[int]]:
    """Indices of the data.train_size / data.test_size subset of ``total`` images (``held``: how many data.val_size
    held out before); None for all."""
    if size is None or size == total:
        return None
    if size > total:
        after = f" (data.val_size={held} are held out for validation)" if held else ""
        raise UsageError(f"{key}={size} exceeds the {total} images available{after}; lower it or set {key}=null (all)")
    # Random, not the first N: image folders are sorted by class.
    order = torch.randperm(total, generator=torch.Generator().manual_seed(_SUBSET_SEED))
    return sorted(order[:size].tolist())


def _check_same_classes(config: DataConfig, train: Sequence[str], test: Sequence[str]) -> None:
    if list(train) != list(test):
        raise UsageError(f"data.root={config.root}: train classes {list(train)} differ from test classes "
                         f"{list(test)}; both splits need the same class folders")


def _check_class_count(config: DataConfig, classes: Sequence[str]) -> None:
    """data.num_classes, where set, is a check of what the data holds (the config checks the CIFAR sets)."""
    if config.num_classes is not None and config.num_classes != len(classes):
        raise UsageError(f"data.num_classes={config.num_classes} but data.root={config.root} holds {len(classes)} "
                         f"classes; set data.num_classes={len(classes)} or null")
