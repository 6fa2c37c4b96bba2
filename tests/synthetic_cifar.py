"""Small synthetic copies of CIFAR-10 and CIFAR-100 in torchvision's on-disk format, and a way to run the
real CLI on them.

torchvision reads its pickled batch files (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
``batches.meta``; ``cifar-100-python/train``, ``test``, ``meta`` with ``fine_labels`` and ``coarse_labels``)
only after checking each file's MD5 against the real dataset's, which no synthetic file can match. The
official API has no switch for it; :func:`skip_checksums` replaces the module-level ``check_integrity`` that
``torchvision.datasets.cifar`` calls for every file (data and meta) with "the file exists". Everything
else, reading, decoding, class names, is torchvision's own code. As a script it patches, then runs a
cifarlab CLI in this process:

    python tests/synthetic_cifar.py cifarlab.train ARGS...
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.config import CIFAR10_CLASSES
from cifarlab.data.classes import CIFAR100_CLASSES, CIFAR100_SUPERCLASSES

SCRIPT = str(Path(__file__).resolve())


CHECK = "torchvision.datasets.cifar.check_integrity"
"""What torchvision's CIFAR10 and CIFAR100 call to check each file (in-process tests monkeypatch it)."""


def unchecked(fpath: str, md5: Any = None) -> bool:
    """``check_integrity`` without the MD5: the file exists."""
    return os.path.isfile(fpath)


def skip_checksums() -> None:
    """Let torchvision read CIFAR files whose MD5 is not the real dataset's (see the module docstring)."""
    from torchvision.datasets import cifar

    assert callable(getattr(cifar, "check_integrity", None)), f"{CHECK} moved: torchvision changed"
    cifar.check_integrity = unchecked  # type: ignore[attr-defined]


def _images(count: int, seed: int) -> np.ndarray:
    """``count`` random 32x32 RGB images as CIFAR stores them: uint8 rows of 3072 (R plane, G, B)."""
    return np.random.default_rng(seed).integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8)


def _dump(path: Path, entry: dict[str, Any]) -> None:
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


def write_cifar10(root: Path, per_batch: int = 8, test: int = 20) -> Path:
    """``root/cifar-10-batches-py`` with 5 training batches of ``per_batch`` images and ``test`` test images;
    labels cycle through the 10 classes."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for b in range(5):
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        _dump(folder / f"data_batch_{b + 1}", {"batch_label": f"training batch {b + 1} of 5",
                                                 "labels": labels, "data": _images(per_batch, b)})
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": [i % 10 for i in range(test)],
                                  "data": _images(test, 99)})
    _dump(folder / "batches.meta", {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": per_batch,
                                    "num_vis": 3072})
    return root


def write_cifar100(root: Path, train: int = 50, test: int = 20) -> Path:
    """``root/cifar-100-python`` with ``train`` and ``test`` images, fine labels spread over the 100 classes
    (each split's label ``i`` is ``(37 * i) % 100``) and their coarse labels, and the meta file's names."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    coarse_of = {name: k for k, fine in enumerate(CIFAR100_SUPERCLASSES.values()) for name in fine}
    for split, count, seed in (("train", train, 1), ("test", test, 2)):
        fine = [(37 * i + seed) % 100 for i in range(count)]
        _dump(folder / split, {"filenames": [f"{split}_{i}.png" for i in range(count)], "batch_label": split,
                               "fine_labels": fine, "coarse_labels": [coarse_of[CIFAR100_CLASSES[f]] for f in fine],
                               "data": _images(count, seed)})
    _dump(folder / "meta", {"fine_label_names": list(CIFAR100_CLASSES),
                            "coarse_label_names": list(CIFAR100_SUPERCLASSES)})
    return root


def main() -> int:
    """``python tests/synthetic_cifar.py MODULE ARGS``: ``MODULE.main(ARGS)`` with the checksums skipped."""
    skip_checksums()
    module = importlib.import_module(sys.argv[1])
    return int(module.main(sys.argv[2:]))


if __name__ == "__main__":
    sys.exit(main())
