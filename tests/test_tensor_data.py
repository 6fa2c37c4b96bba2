"""The tensor data path: cache, equivalence with the torchvision path, seeded batched augmentation. The
foundation's guarantees on it (sharding, exact evaluation counts, exact resume) through the CLI are
tests/test_speed_switches.py's SWITCHES, which turn data.loader=tensor on."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from synthetic_cifar import CHECK, unchecked, write_cifar10, write_cifar100
from torch.utils.data import Dataset

from cifarlab.config import DataConfig
from cifarlab.data import build_data
from cifarlab.data.images import SeededTransform, build_transform
from cifarlab.data.tensors import augment, cutout
from cifarlab.report.console import Console, _QuarterLines


def _folder(root: Path, per_class: int = 4) -> Path:
    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog", "frog")):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=torch.Generator().manual_seed(100 * c + i))
                Image.fromarray(pixels.to(torch.uint8).numpy()).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.unit
def test_decoded_tensors_are_cached_and_redone_when_the_source_changes(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    config = DataConfig(name="imagefolder", root=str(root), loader="tensor", augment="none")
    first = build_data(config, seed=0)
    cache = sorted((root / ".cifarlab-cache").glob("*.safetensors"))
    assert [p.name.split("-")[0] for p in cache] == ["test", "train"]
    stamps = [p.stat().st_mtime_ns for p in cache]
    again = build_data(config, seed=0)
    assert [p.stat().st_mtime_ns for p in cache] == stamps  # read back, not decoded again
    assert torch.equal(first.train.images, again.train.images)

    changed = root / "train" / "cat" / "0.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))
    third = build_data(config, seed=0)
    train_cache = list((root / ".cifarlab-cache").glob("train-*.safetensors"))
    assert len(train_cache) == 1 and train_cache[0] not in cache  # the stale one is gone
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32)
    assert torch.equal(third.train.images[0], red)


class Recorded:
    """A :class:`cifarlab.data.path.Progress` that keeps what it is told."""

    def __init__(self) -> None:
        self.bars: list[tuple[str, int, list[int]]] = []
        self.lines: list[str] = []

    @contextlib.contextmanager
    def progress(self, title: str, total: int) -> Iterator[Callable[[int], None]]:
        counts: list[int] = []
        self.bars.append((title, total, counts))
        yield counts.append

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.mark.unit
def test_the_one_off_decode_shows_its_progress_and_says_when_it_is_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path / "data", per_class=200)  # 600 images a split
    config = DataConfig(name="imagefolder", root=str(root), loader="tensor", augment="none")
    seen = Recorded()
    build_data(config, seed=0, progress=seen)
    ((title, total, counts),) = seen.bars  # one bar over both splits
    assert (title, total, sum(counts)) == ("decoding 1,200 images", 1200, 1200) and len(counts) >= 4
    (line,) = seen.lines
    assert re.fullmatch(rf"decoded 1,200 images in \d+\.\d s into {re.escape(str(root / '.cifarlab-cache'))}", line)
    build_data(config, seed=0, progress=seen)  # cached: no work to show
    build_data(DataConfig(**{**config.__dict__, "loader": "torchvision"}), seed=0, progress=seen)  # decodes per image
    assert len(seen.bars) == 1 and len(seen.lines) == 1

    # The console off a terminal (a log): a plain line at each quarter passed once the work has taken
    # _QuarterLines.QUIET_FOR seconds (here at once), then the done line.
    monkeypatch.setattr(_QuarterLines, "QUIET_FOR", 0.0)
    shutil.rmtree(root / ".cifarlab-cache")
    build_data(config, seed=0, progress=Console(True))
    printed = capsys.readouterr().out.splitlines()
    assert [re.sub(r"about \d+ s", "about N s", line.split("] ", 1)[1]) for line in printed[:-1]] == [
        f"decoding 1,200 images: {done}/1,200 done, about N s left" for done in ("500", "600", "1,100")]
    assert len(printed) == 4 and "] decoded 1,200 images in " in printed[-1]


@pytest.mark.unit
def test_cifar10_and_cifar100_caches_live_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data.root=data holds both sets by default: decoding one must not delete the other's cache as stale."""
    monkeypatch.setattr(CHECK, unchecked)
    write_cifar100(write_cifar10(tmp_path))
    cache = tmp_path / ".cifarlab-cache"
    build_data(DataConfig(name="cifar10", root=str(tmp_path), download=False), seed=0)
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    hundred = build_data(DataConfig(name="cifar100", root=str(tmp_path), download=False), seed=0)
    again = build_data(DataConfig(name="cifar10", root=str(tmp_path), download=False), seed=0)
    assert sorted(p.name.rsplit("-", 1)[0] for p in cache.iterdir()) == ["cifar100-test", "cifar100-train", "test",
                                                                         "train"]
    assert {name: (cache / name).stat().st_mtime_ns for name in stamps} == stamps  # CIFAR-10's read back
    assert len(again.classes) == 10 and len(hundred.classes) == 100
    assert torch.equal(build_data(DataConfig(name="cifar100", root=str(tmp_path), download=False),
                                  seed=0).train.images, hundred.train.images)


@pytest.mark.unit
def test_tensor_and_torchvision_paths_see_the_same_images(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    base = DataConfig(name="imagefolder", root=str(root), augment="none", num_workers=0, train_size=7, test_size=5,
                      loader="torchvision")
    plain = build_data(base, seed=0)
    tensor = build_data(DataConfig(**{**base.__dict__, "loader": "tensor"}), seed=0)
    _, plain_test = plain.loaders(batch_size=4, eval_batch_size=4)
    _, tensor_test = tensor.loaders(batch_size=4, eval_batch_size=4)
    for batch_a, batch_b in zip(plain_test, tensor_test, strict=True):
        images_a, labels_a = plain.to_model(batch_a, train=False)
        images_b, labels_b = tensor.to_model(batch_b, train=False)
        torch.testing.assert_close(images_a, images_b, atol=1e-6, rtol=0)
        assert torch.equal(labels_a, labels_b)
    for index in range(len(plain.train)):  # the same training subset, image by image
        image, label = plain.train[index]
        images, labels = tensor.to_model(tensor.train.__getitems__([index]), train=True)
        torch.testing.assert_close(image, images[0], atol=1e-6, rtol=0)
        assert label == int(labels[0])


class _Repeated(Dataset):
    def __init__(self, image: Image.Image, count: int) -> None:
        self.image, self.count = image, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.image, 0


def _positions(images: torch.Tensor) -> list[tuple[int, int]]:
    """Where the one bright pixel of each image went."""
    flat = images[:, 0].flatten(1).argmax(dim=1)
    return [(int(i) // 32, int(i) % 32) for i in flat]


@pytest.mark.unit
def test_batched_augmentation_matches_torchvision_statistically() -> None:
    count = 6000
    pixels = torch.zeros(3, 32, 32, dtype=torch.uint8)
    pixels[:, 10, 5] = 255  # one marker, off-centre so flips and shifts are told apart
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    config = DataConfig(augment="flip_crop", mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    reference = SeededTransform(_Repeated(image, count), build_transform(config, True), seed=0, random=True)
    theirs = _positions(torch.stack([reference[i][0] for i in range(count)]))
    ours = _positions(augment(pixels.expand(count, 3, 32, 32), torch.arange(count), seed=0, epoch=0,
                              mode="flip_crop"))
    support = {(10 + dy, c) for dy in range(-4, 5) for c in [*range(1, 10), *range(22, 31)]}
    assert set(theirs) == set(ours) == support  # 9 x 9 shifts, each plain or mirrored
    histogram = [{cell: 0 for cell in support} for _ in range(2)]
    for h, positions in zip(histogram, (theirs, ours)):
        for cell in positions:
            h[cell] += 1
    distance = sum(abs(histogram[0][c] - histogram[1][c]) for c in support) / (2 * count)
    assert distance < 0.1  # total variation between two samples of the same uniform law
    for positions in (theirs, ours):
        assert 0.46 < sum(col > 16 for _, col in positions) / count < 0.54  # flip rate 1/2


@pytest.mark.unit
def test_augmentation_depends_only_on_seed_epoch_and_index() -> None:
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    indices = torch.arange(100, 110)
    whole = augment(images, indices, seed=1, epoch=2, mode="flip_crop")
    order = torch.tensor([7, 2, 9])
    assert torch.equal(augment(images[order], indices[order], seed=1, epoch=2, mode="flip_crop"), whole[order])
    assert not torch.equal(augment(images, indices, seed=1, epoch=3, mode="flip_crop"), whole)
    assert not torch.equal(augment(images, indices, seed=2, epoch=2, mode="flip_crop"), whole)
    assert torch.equal(augment(images, indices, seed=1, epoch=2, mode="none"), images)


def _holes(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: how many pixels cutout zeroed, and the centre row of the hole (images of ones)."""
    zero = images[:, 0] == 0
    rows = zero.any(dim=2).float()
    centre = (rows * torch.arange(32)).sum(dim=1) / rows.sum(dim=1).clamp(min=1)
    return zero.sum(dim=(1, 2)), centre


@pytest.mark.unit
def test_cutout_matches_the_torchvision_path_statistically() -> None:
    count, size = 4000, 8
    config = DataConfig(augment="none", cutout=size, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    image = Image.new("RGB", (32, 32), (255, 255, 255))
    reference = SeededTransform(_Repeated(image, count), build_transform(config, True), seed=0, random=True)
    theirs = torch.stack([reference[i][0] for i in range(count)])
    ours = cutout(torch.ones(count, 3, 32, 32), torch.arange(count), seed=0, epoch=0, size=size)
    for images in (theirs, ours):
        area, centre = _holes(images)
        assert int(area.max()) == size * size and int(area.min()) >= size * size // 4  # clipped at a corner
        assert 0.85 < area.float().mean() / (size * size) < 0.91  # 7.5 of 8 rows/columns on average: 0.879
        assert 14.5 < float(centre.mean()) < 16.5  # centres uniform over the image
        assert torch.equal(images[:, 0] == 0, images[:, 2] == 0)  # all channels
    area_theirs, area_ours = _holes(theirs)[0].float(), _holes(ours)[0].float()
    assert abs(float(area_theirs.mean() - area_ours.mean())) < 1.5
    again = cutout(torch.ones(count, 3, 32, 32), torch.arange(count), seed=0, epoch=0, size=size)
    assert torch.equal(again, ours)  # a function of (seed, epoch, index) only
    assert not torch.equal(cutout(torch.ones(count, 3, 32, 32), torch.arange(count), seed=0, epoch=1, size=size), ours)
