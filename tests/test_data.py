"""Data: class names travel with the data, subsets are fixed, augmentation is seeded per sample; torchvision's
CIFAR-10 and CIFAR-100 readers on small synthetic copies; unreadable images are named in one line."""

from __future__ import annotations

import gc
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_cifar import CHECK, unchecked, write_cifar10, write_cifar100
from torch.utils.data import DataLoader

from cifarlab.config import CIFAR10_CLASSES, CIFAR10_STATS, CIFAR100_STATS, ConfigError, DataConfig, load_config
from cifarlab.data import build_data
from cifarlab.data.classes import CIFAR100_CLASSES
from cifarlab.data.sources import UnreadableImage
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


@pytest.mark.parametrize("name, title, folder", [("cifar10", "CIFAR-10", "cifar-10-batches-py"),
                                                 ("cifar100", "CIFAR-100", "cifar-100-python")])
def test_a_missing_cifar_set_names_the_keys_and_the_fix(tmp_path: Path, name: str, title: str, folder: str) -> None:
    with pytest.raises(UsageError) as raised:
        build_data(DataConfig(name=name, root=str(tmp_path / "none"), download=False), seed=0)
    message = str(raised.value)
    assert message.startswith(f"data.name={name}: {title} in data.root={tmp_path / 'none'} is not there; "
                              f"point data.root at a folder holding {folder}, or use")
    assert "data.name=imagefolder" in message and "data.name=fake" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_torchvisions_cifar_readers_on_both_paths(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The code the default command runs (torchvision's CIFAR10/CIFAR100, then the decoded cache), on a copy in
    torchvision's own format; only the MD5 check is skipped."""
    monkeypatch.setattr(CHECK, unchecked)
    (write_cifar10 if name == "cifar10" else write_cifar100)(tmp_path)
    config = DataConfig(name=name, root=str(tmp_path), download=False, augment="none", num_workers=0)
    tensor = build_data(config, seed=0)
    plain = build_data(DataConfig(**{**config.__dict__, "loader": "torchvision"}), seed=0)
    expected = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
    assert tensor.classes == plain.classes == expected
    assert (len(tensor.train), len(tensor.test)) == (len(plain.train), len(plain.test)) == (40 if name == "cifar10"
                                                                                          else 50, 20)
    # Labels as the pickles hold them (CIFAR-100: the fine labels), pixels as stored (R, G, B planes).
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    with open(folder / ("test_batch" if name == "cifar10" else "test"), "rb") as handle:
        stored = pickle.load(handle)
    assert tensor.test.labels.tolist() == stored["labels" if name == "cifar10" else "fine_labels"]
    assert torch.equal(tensor.test.images, torch.from_numpy(stored["data"]).view(-1, 3, 32, 32))
    # Normalised with the dataset's own statistics (data.mean/std null), the same on both paths.
    mean, std = CIFAR10_STATS if name == "cifar10" else CIFAR100_STATS
    images, labels = tensor.to_model(tensor.test.__getitems__([3]), train=False)
    raw = torch.from_numpy(stored["data"][3]).view(3, 32, 32).float() / 255
    expected_image = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(images[0], expected_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.test[3][0], expected_image, atol=1e-5, rtol=0)
    assert int(labels[0]) == plain.test[3][1]


def test_mean_and_std_default_to_the_datasets_own() -> None:
    assert DataConfig().normalization() == CIFAR10_STATS
    assert DataConfig(name="cifar100").normalization() == CIFAR100_STATS
    assert DataConfig(name="imagefolder").normalization() == DataConfig(name="fake").normalization() == CIFAR10_STATS
    assert DataConfig(name="cifar100", mean=[0.5] * 3).normalization() == ((0.5,) * 3, CIFAR100_STATS[1])
    with pytest.raises(ConfigError, match=r"^data.std needs 3 values \(R, G, B\) or null"):
        load_config(None, ["data.std=[1, 2]"])


def test_num_classes_sizes_fake_data_and_checks_real_data(tmp_path: Path) -> None:
    fake = DataConfig(name="fake", train_size=8, test_size=4, loader="torchvision")
    assert build_data(fake, seed=0).classes == CIFAR10_CLASSES  # null = 10
    hundred = build_data(DataConfig(**{**fake.__dict__, "num_classes": 100}), seed=0)
    assert hundred.classes == CIFAR100_CLASSES
    assert build_data(DataConfig(**{**fake.__dict__, "num_classes": 30}), seed=0).classes[::29] == ("class00",
                                                                                                   "class29")
    for overrides, message in ((["data.num_classes=100"], "data.num_classes=100 does not match data.name=cifar10, "
                                "which has 10 classes; set data.num_classes=10 or null"),
                               (["data.name=cifar100", "data.num_classes=10"], "data.num_classes=10 does not match "
                                "data.name=cifar100, which has 100 classes; set data.num_classes=100 or null"),
                               (["data.name=fake", "data.num_classes=1"], "data.num_classes=1 must be 2 or more")):
        with pytest.raises(ConfigError) as raised:
            load_config(None, overrides)
        assert str(raised.value).startswith(message)
    root = _folder(tmp_path / "ok", {"train": ["cat", "dog"], "test": ["cat", "dog"]})
    with pytest.raises(UsageError, match=f"^data.num_classes=3 but data.root={root} holds 2 classes; set "
                                         f"data.num_classes=2 or null$"):
        build_data(DataConfig(name="imagefolder", root=str(root), num_classes=3), seed=0)


@pytest.fixture
def prompt_worker_shutdown(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A DataLoader whose worker raised waits torch's MP_STATUS_CHECK_INTERVAL (5 s) for that worker when it is
    shut down, then terminates it; the test's loaders are freed with the exception's traceback, by whichever later
    test the garbage collector happens to run in (10 s of the unit tier). Here: 0.1 s, and freed at teardown."""
    from torch.utils.data import _utils

    monkeypatch.setattr(_utils, "MP_STATUS_CHECK_INTERVAL", 0.1)
    yield
    gc.collect()


@pytest.mark.parametrize("loader, workers", [("tensor", 0), ("torchvision", 0), ("torchvision", 1)])
def test_an_unreadable_image_is_named_in_one_line(tmp_path: Path, loader: str, workers: int,
                                                  request: pytest.FixtureRequest) -> None:
    """At decode time on the tensor path; on the torchvision path in the loader, also from a worker process
    (torch re-raises a worker's error with its whole traceback as the message)."""
    if workers:
        request.getfixturevalue("prompt_worker_shutdown")
    root = _folder(tmp_path / "data", {"train": ["cat", "dog"], "test": ["cat", "dog"]})
    bad = root / "train" / "dog" / "1.png"
    bad.write_text("not an image\n")
    truncated = root / "test" / "cat" / "2.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    config = DataConfig(name="imagefolder", root=str(root), loader=loader, num_workers=workers, augment="none")
    with pytest.raises(UnreadableImage) as raised:
        data = build_data(config, seed=0)  # the tensor path decodes here, the training split first
        for _ in data.loaders(batch_size=2, eval_batch_size=2)[0] or []:
            pass
    assert str(raised.value) == f"cannot read image {bad} (cannot identify image file); remove or replace it"
    bad.unlink()
    with pytest.raises(UnreadableImage) as raised:
        data = build_data(config, seed=0)
        for _ in data.loaders(batch_size=2, eval_batch_size=2)[1]:
            pass
    assert str(raised.value).startswith(f"cannot read image {truncated} (")
    assert str(raised.value).endswith("); remove or replace it") and "\n" not in str(raised.value)


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
    assert sum(len(labels) for _, labels, _ in test) == 9
    with pytest.raises(UsageError, match="train.batch_size=128 exceeds the 70 training images"):
        data.loaders(batch_size=128, eval_batch_size=4)


@pytest.mark.unit
def test_tensor_batches_index_the_images_with_rows_on_their_device() -> None:
    """Rows on the host indexing images on a GPU would be a blocking copy per batch: they go to the images' device
    (the meta device stands in for a GPU here)."""
    from cifarlab.data.tensors import TensorImages

    images = TensorImages(torch.empty(10, 3, 4, 4, dtype=torch.uint8, device="meta"),
                          torch.empty(10, dtype=torch.long, device="meta"))
    batch, labels, rows = images.__getitems__([3, 1, 4])
    assert rows.device.type == batch.device.type == labels.device.type == "meta" and batch.shape == (3, 3, 4, 4)



@pytest.mark.unit
def test_persistent_workers_augment_each_epoch_as_in_process_loading_does() -> None:
    """Persistent workers keep their copy of the dataset across epochs: the epoch they augment with is the one
    set_epoch wrote (shared memory), so every sample's augmentation is the in-process loader's."""
    def epochs(workers: int) -> list[torch.Tensor]:
        config = DataConfig(name="fake", train_size=32, test_size=4, augment="flip_crop", cutout=8,
                            loader="torchvision", num_workers=workers)
        data = build_data(config, seed=0)
        options = data.loader_options()
        assert options["persistent_workers"] == (workers > 0)
        loader = DataLoader(data.train, batch_size=8, **options)  # in order: only the augmentation differs
        seen = []
        for epoch in range(3):
            data.set_epoch(epoch)
            seen.append(torch.cat([images for images, *_ in loader]))
        return seen

    persistent, in_process = epochs(2), epochs(0)
    assert all(torch.equal(a, b) for a, b in zip(persistent, in_process, strict=True))
    assert not torch.equal(in_process[0], in_process[1])
