"""Data: class names travel with the data, subsets are fixed, augmentation is seeded per sample."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from cifarlab.config import CIFAR10_CLASSES, DataConfig
from cifarlab.data import build_data
from cifarlab.errors import UsageError

pytestmark = pytest.mark.unit


def _folder(root: Path, classes: dict[str, list[str]]) -> Path:
    for split in ("train", "test"):
        for name in classes[split]:
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), color=(i * 40, 10, 200)).save(root / split / name / f"{i}.png")
    return root


def test_fake_data_sizes_names_and_determinism() -> None:
    data = build_data(DataConfig(name="fake", train_size=20, test_size=7, augment="none", loader="torchvision"), seed=0)
    assert (len(data.train), len(data.test)) == (20, 7)
    assert data.classes == CIFAR10_CLASSES
    assert data.input_shape() == (3, 32, 32)
    first, label = data.train[3]
    assert torch.equal(first, data.train[3][0]) and label == data.train[3][1]
    assert not torch.equal(data.train[0][0], data.test[0][0])  # test images are not training images


def test_imagefolder_classes_and_errors(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ok", {"train": ["cat", "dog"], "test": ["cat", "dog"]})
    data = build_data(DataConfig(name="imagefolder", root=str(root)), seed=0)
    assert data.classes == ("cat", "dog")
    assert (len(data.train), len(data.test)) == (6, 6)

    with pytest.raises(UsageError, match=r"data.name=imagefolder: .*missing/train does not exist; set data.root"):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path / "missing")), seed=0)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    with pytest.raises(UsageError, match=r"empty/train holds no images"):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path / "empty")), seed=0)
    odd = _folder(tmp_path / "odd", {"train": ["cat", "dog"], "test": ["cat"]})
    with pytest.raises(UsageError, match="train classes .* differ from test classes"):
        build_data(DataConfig(name="imagefolder", root=str(odd)), seed=0)


def test_missing_cifar10_names_the_keys_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as raised:
        build_data(DataConfig(name="cifar10", root=str(tmp_path / "none"), download=False), seed=0)
    message = str(raised.value)
    assert "data.root=" in message and "data.name=imagefolder" in message and "data.name=fake" in message
    assert "\n" not in message


def test_subsets_are_fixed_and_checked(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ok", {"train": ["a", "b", "c"], "test": ["a", "b", "c"]})
    config = DataConfig(name="imagefolder", root=str(root), train_size=4, test_size=5, augment="none")
    one, two = build_data(config, seed=0), build_data(config, seed=99)
    assert len(one.train) == 4 and len(one.test) == 5
    assert [one.train[i][1] for i in range(4)] == [two.train[i][1] for i in range(4)]
    assert len({one.train[i][1] for i in range(4)}) > 1  # a random subset, not the first class folder
    with pytest.raises(UsageError, match=r"data.train_size=50 exceeds the 9 images available"):
        build_data(DataConfig(name="imagefolder", root=str(root), train_size=50), seed=0)


def test_augmentation_is_a_function_of_seed_epoch_and_index() -> None:
    config = DataConfig(name="fake", train_size=16, test_size=4, augment="flip_crop", loader="torchvision")
    data = build_data(config, seed=3)
    before = torch.get_rng_state()
    first = [data.train[i][0] for i in range(16)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    torch.manual_seed(1234)  # global state does not matter
    assert all(torch.equal(first[i], data.train[i][0]) for i in reversed(range(16)))
    data.set_epoch(1)
    assert any(not torch.equal(first[i], data.train[i][0]) for i in range(16))
    other_seed = build_data(config, seed=4)
    assert any(not torch.equal(first[i], other_seed.train[i][0]) for i in range(16))
    # Test images are never augmented.
    assert torch.equal(data.test[0][0], build_data(config, seed=4).test[0][0])


def test_loaders_use_global_batches() -> None:
    config = DataConfig(name="fake", train_size=70, test_size=9, num_workers=0, loader="torchvision")
    data = build_data(config, seed=0)
    train, test = data.loaders(batch_size=32, eval_batch_size=4)
    assert len(train) == 2  # the partial batch is dropped: every step has 32 images
    assert sum(len(labels) for _, labels in test) == 9
    with pytest.raises(UsageError, match="train.batch_size=128 exceeds the 70 training images"):
        data.loaders(batch_size=128, eval_batch_size=4)
