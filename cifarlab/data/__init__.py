"""The data path: CIFAR-10, CIFAR-100, an image folder, or FakeData, as batches ready for the model.

Two implementations share one protocol, :class:`cifarlab.data.path.DataPath`: ``data.loader=tensor``
(:mod:`cifarlab.data.tensors`: decoded once, kept in memory, augmented a batch at a time) and
``data.loader=torchvision`` (:mod:`cifarlab.data.images`: decoded and augmented per image in
DataLoader workers). Either way the loop asks for ``train_batches(epoch, skip)``, ``test_batches()`` and, with a
validation split (``data.val_size`` images held out of the training split), ``val_batches()``, and gets (normalised
images, labels) on the training device.

Augmentation randomness is a pure function of (train.seed, epoch, sample index) on both paths, whichever
process or worker loads a sample: one run gives the same numbers on 1 or N processes, with any
``data.num_workers``, and after a mid-epoch resume.

torchvision is imported only where it is used (its import pulls in torch._dynamo, seconds of start-up):
the tensor path reads an image folder, or any decoded cache, without it.

This package's modules: ``path`` (the protocol), ``sources`` (where images come from), ``validation`` (which training
images are held out for validation), ``tensors`` and ``images`` (the two implementations), ``seeding`` (the hash that
seeds the augmentations), ``mixing`` (MixUp/CutMix on either path's training batches), ``classes`` (class names
and CIFAR-100's superclasses). Importing the package imports no
torch: :func:`build_data` imports the path it builds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from cifarlab.config import DataConfig

if TYPE_CHECKING:
    import torch

    from cifarlab.data.path import DataPath, Progress


def build_data(config: DataConfig, seed: int,
               main_process_first: Optional[contextlib.AbstractContextManager[Any]] = None,
               warn: Callable[[str], None] = lambda message: None,
               device: Optional[torch.device] = None, progress: Optional[Progress] = None) -> DataPath:
    """Every split on the path ``data.loader`` names. ``main_process_first`` lets rank 0 download (and, for
    the tensor path, decode and cache) before the others read. ``device``: where the tensor path keeps the
    images (the training device; None = CPU memory). ``progress``: where the one-off decode of an image folder
    into the tensor path's cache shows its progress (a bar, then one line); the per-image path has no such work."""
    from cifarlab.data import images, tensors

    paths: dict[str, Callable[..., DataPath]] = {"tensor": tensors.TensorData.build,
                                                  "torchvision": images.ImageData.build}
    with main_process_first or contextlib.nullcontext():
        return paths[config.loader](config, seed, warn=warn, device=device, progress=progress)
