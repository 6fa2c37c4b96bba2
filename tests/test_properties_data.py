"""Properties of the training data order (Hypothesis; profiles in conftest.py): for any dataset size, batch size,
process count, seed, epoch and resume step, an epoch's batches hold no image twice and every image once where the
batch size divides the dataset, N processes split exactly the 1-process global batches, and a resumed epoch gives
the batches it had left. The contract the bitwise-resume tests check by example, here on the sampler itself: the
trainer's own Accelerator (cifarlab.run.engine) and data path (DataPath.prepare, train_batches), with the process
count and rank set in Accelerate's state, in this process. And of the validation split (cifarlab.data.validation):
for any labels, size and seed it is disjoint from the training images, exactly its size, stratified and the same
again for the same seed, or refused in one line."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from cifarlab.config import SEED_LIMIT, Config, load_config
from cifarlab.data.tensors import TensorData, TensorImages
from cifarlab.data.validation import complement, held_out
from cifarlab.errors import UsageError
from cifarlab.run import engine

from conftest import fresh_accelerate

pytestmark = pytest.mark.unit


def identified(config: Config, size: int) -> TensorData:
    """The tensor data path over ``size`` 1-pixel images whose pixel spells their index (red: index % 256, green:
    index // 256), normalised to the same numbers (data.mean 0, data.std 1/255), not augmented."""
    index = torch.arange(size)
    images = torch.stack([index % 256, index // 256, torch.zeros_like(index)], 1).to(torch.uint8).view(size, 3, 1, 1)
    classes = [str(label) for label in range(10)]
    return TensorData(config.data, config.train.seed, classes, TensorImages(images, index % 10),
                      TensorImages(images[:2], index[:2] % 10))


def batches(config: Config, size: int, processes: int, rank: int, epoch: int, skip: int) -> list[list[int]]:
    """The image indices of each training batch of ``epoch`` that process ``rank`` of ``processes`` gets, from batch
    ``skip`` on (a resumed run's), as a freshly started process would (a new Accelerator and data path)."""
    fresh_accelerate()
    try:
        accelerator = engine.build_accelerator(config)
        # What a launch of `processes` processes gives this one; the trainer's Accelerator shards by them.
        accelerator.state.num_processes, accelerator.state.process_index = processes, rank
        data = identified(config, size)
        data.prepare(accelerator, config.train.batch_size, config.train.eval_batch_size)
        return [(images[:, 0, 0, 0] + 256 * images[:, 1, 0, 0]).round().long().tolist()
                for images, _ in data.train_batches(epoch, skip)]
    finally:
        fresh_accelerate()


@given(st.integers(1, 300), st.integers(1, 4), st.integers(1, 8), st.integers(0, SEED_LIMIT - 1),
       st.integers(0, 5), st.integers(0, 10**6), st.integers(0, 3))
@example(20, 2, 3, 3, 1, 1, 1)
@example(7, 1, 7, 0, 0, 1, 0)  # one batch: the whole set, resumed after it
def test_every_image_once_an_epoch_and_n_processes_split_the_global_batches(size: int, processes: int, share: int,
                                                                          seed: int, epoch: int, resume: int,
                                                                          rank: int) -> None:
    batch = processes * share
    config = load_config(None, ["data.name=fake", "data.augment=none", "data.mean=[0,0,0]",
                                f"data.std=[{1 / 255},{1 / 255},{1 / 255}]", f"train.batch_size={batch}",
                                f"train.eval_batch_size={batch}", f"train.seed={seed}", "model.name=lenet"])
    if batch > size:
        with pytest.raises(UsageError, match=f"train.batch_size={batch} exceeds the {size} training images"):
            batches(config, size, 1, 0, epoch, 0)
        return
    whole = batches(config, size, 1, 0, epoch, 0)
    seen = [image for step in whole for image in step]
    assert len(whole) == size // batch and all(len(step) == batch for step in whole)
    assert len(set(seen)) == len(seen) and set(seen) <= set(range(size))  # no image twice
    if size % batch == 0:
        assert sorted(seen) == list(range(size))  # every image once
    ranks = [batches(config, size, processes, rank, epoch, 0) for rank in range(processes)]
    assert [[image for rank in ranks for image in rank[step]] for step in range(len(whole))] == whole
    assert all(len(rank) == len(whole) for rank in ranks)
    skip, rank = resume % (len(whole) + 1), rank % processes  # a resume at any batch of the epoch, on any rank
    assert batches(config, size, 1, 0, epoch, skip) == whole[skip:]
    assert batches(config, size, processes, rank, epoch, skip) == ranks[rank][skip:]


@st.composite
def labels_and_size(draw: st.DrawFn) -> tuple[list[int], int]:
    """Training labels (up to 10 classes, any balance) and a validation size from 0 to all of them."""
    labels = draw(st.lists(st.integers(0, 9), min_size=1, max_size=400))
    return labels, draw(st.integers(0, len(labels)))


@given(labels_and_size(), st.integers(0, SEED_LIMIT - 1))
@example(([0] + [1] * 9, 5), 0)  # a tie that would take a class's only image
def test_a_validation_split_is_disjoint_exact_stratified_and_fixed_by_its_seed(split: tuple[list[int], int],
                                                                               seed: int) -> None:
    labels, size = split
    counts = [labels.count(label) for label in range(10)]
    try:
        val = held_out(labels, size, seed)
    except UsageError as error:
        assert str(error).startswith(f"data.val_size={size} ") and "\n" not in str(error)
        # Refused only where some class's share, proportional and rounded up, would be every image it has.
        assert size >= len(labels) or any(count and size * count > (count - 1) * len(labels) for count in counts)
        return
    train = complement(len(labels), val)
    assert len(val) == size and val == sorted(set(val)) and set(val).isdisjoint(train)
    assert sorted(val + train) == list(range(len(labels)))
    held = [sum(1 for index in val if labels[index] == label) for label in range(10)]
    # Each class within 1 of its proportional share (the shares sum to the size: counted above), and left at least
    # one training image.
    assert all(abs(share * len(labels) - size * count) < len(labels) for share, count in zip(held, counts))
    assert all(share < count for share, count in zip(held, counts) if count)
    assert held_out(labels, size, seed) == val
