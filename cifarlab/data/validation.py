"""Which of the training split's images are held out for validation (``data.val_size``, ``data.val_seed``).

A pure function of the split's labels, the size and the seed: every process, both data paths, any train.seed and
any data.train_size hold out the same images, so every run of a comparison chooses on one validation set. The
split is stratified: each class gives its share of the held-out images, so the validation set has the training
split's class balance (CIFAR-10's 5,000 held-out images: 500 a class).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Optional, Union

import torch

from cifarlab.errors import UsageError

Labels = Union[torch.Tensor, Sequence[int]]
"""The training split's labels in index order (a 1-D tensor or a sequence of ints)."""


def shares(counts: Sequence[int], val_size: int) -> list[int]:
    """Each class's share of ``val_size`` held-out images, in label order (``counts``: images a class has).
    Hamilton's largest-remainder rule: a class gets its proportional share ``val_size * count / total`` rounded down,
    and the images that rounding leaves over go one each to the classes with the largest remainders, ties to the
    lower label. The shares sum to exactly ``val_size`` and each is within 1 of proportional. Integer arithmetic:
    remainders compare exactly."""
    total = sum(counts)
    scaled = [val_size * count for count in counts]  # proportional shares, times total
    found = [share // total for share in scaled]
    left_over = val_size - sum(found)
    for label in sorted(range(len(counts)), key=lambda label: (-(scaled[label] % total), label))[:left_over]:
        found[label] += 1
    return found


def held_out(labels: Labels, val_size: int, val_seed: int, classes: Sequence[str] = ()) -> list[int]:
    """The indices (sorted) of the training split's images held out for validation: each class's share
    (:func:`shares`) of its images, drawn uniformly within the class by a generator seeded with ``val_seed`` alone
    (never train.seed, never the global generator), class after class in label order. ``classes`` (names by label)
    only name a class in the refusal of a ``val_size`` that would leave it no training image."""
    labels = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
    if val_size == 0:
        return []
    counts = torch.bincount(labels, minlength=len(classes)).tolist() if len(labels) else []
    found = shares(counts, val_size) if counts else []
    _refuse_emptied(counts, found, val_size, classes)
    by_class = torch.argsort(labels, stable=True)  # each class's indices, together, in index order
    generator = torch.Generator().manual_seed(val_seed)
    chosen, start = [], 0
    for count, share in zip(counts, found):
        members = by_class[start:start + count]
        start += count
        if share:
            chosen.append(members[torch.randperm(count, generator=generator)[:share]])
    return sorted(torch.cat(chosen).tolist())


def _refuse_emptied(counts: Sequence[int], found: Sequence[int], val_size: int, classes: Sequence[str]) -> None:
    """Every class keeps at least one training image (a class the model never trains on, but is validated on,
    would make the validation figures meaningless)."""
    total = sum(counts)
    if val_size >= total:
        raise UsageError(f"data.val_size={val_size} leaves none of the {total} training images to train on; lower "
                         f"data.val_size (each class keeps at least one training image)")
    for label, (count, share) in enumerate(zip(counts, found)):
        if count and share == count:
            name = classes[label] if label < len(classes) else str(label)
            raise UsageError(f"data.val_size={val_size} of the {total} training images would hold out every image of "
                             f"class {name} ({count}); lower data.val_size (each class keeps at least one training "
                             f"image)")


def complement(total: int, indices: Sequence[int]) -> list[int]:
    """The indices of ``range(total)`` not in ``indices``, sorted: the training images left by a held-out set."""
    kept = torch.ones(total, dtype=torch.bool)
    kept[torch.as_tensor(list(indices), dtype=torch.long)] = False
    return kept.nonzero().flatten().tolist()


def digest(indices: Sequence[int], source_key: Optional[str]) -> str:
    """A short key of a validation split, for the run record's data fingerprint: its held-out indices together with
    the key of the training files they index (None: fake data), so two runs that held out different images, or the
    same indices of other files, differ."""
    text = f"{source_key}|" + ",".join(str(index) for index in indices)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
