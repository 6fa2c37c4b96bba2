"""The validation split (data.val_size, data.val_seed; cifarlab.data.validation and both data paths): disjoint from
the training images, stratified by class, fixed by its own seed whatever train.seed, data.train_size, the data path
or the process count; never augmented; part of the run's identity and of its data fingerprint; refused in one line
where it would leave a class nothing to train on. The properties over any labels are in test_properties_data.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from synthetic_cifar import CHECK, unchecked, write_cifar10
from val_split_ranks import LOADERS, config, seen

from cifarlab.config import ConfigError, DataConfig, load_config
from cifarlab.data import build_data
from cifarlab.data.path import cut, subset_indices
from cifarlab.data.validation import complement, digest, held_out, shares
from cifarlab.errors import UsageError
from cifarlab.identity import run_changes
from cifarlab.run import engine
from cifarlab.run.rundir import RunDir

from conftest import CONFIGS, check, cli_env, error_lines, fresh_accelerate, in_process, launch_command, smoke

COUNTS = [30, 20, 10, 5, 1]
LABELS = torch.tensor([label for label, count in enumerate(COUNTS) for _ in range(count)])[
    torch.randperm(sum(COUNTS), generator=torch.Generator().manual_seed(5))]
"""66 training labels, five classes of very different sizes, in no order."""


def _folder(root: Path, per_class: int = 4, classes: tuple[str, ...] = ("cat", "dog", "emu")) -> Path:
    """An image folder whose images all differ (their colour spells class and index)."""
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                Image.new("RGB", (32, 32), color=(label * 80, index * 30, 7)).save(root / split / name / f"{index}.png")
    return root


@pytest.mark.unit
def test_shares_are_proportional_sum_exactly_and_break_ties_to_the_lower_label() -> None:
    assert shares([5000] * 10, 5000) == [500] * 10  # CIFAR-10's training split, 5,000 held out: 500 a class
    assert shares([3, 3, 3], 4) == [2, 1, 1]  # three equal remainders, one image over: the lowest label
    assert shares([1, 9], 5) == [1, 4]  # 0.5 and 4.5
    assert shares(COUNTS, 11) == [5, 3, 2, 1, 0]  # 5, 3.33, 1.67, 0.83, 0.17: the largest remainders round up
    assert shares([4, 0, 4], 2) == [1, 0, 1]  # a label with no image gets none


@pytest.mark.unit
def test_the_split_is_disjoint_stratified_and_fixed_by_its_own_seed() -> None:
    val = held_out(LABELS, 11, val_seed=0)
    train = complement(len(LABELS), val)
    assert len(val) == 11 and val == sorted(set(val))
    assert set(val).isdisjoint(train) and sorted(val + train) == list(range(len(LABELS))) and train == sorted(train)
    assert torch.bincount(LABELS[val], minlength=len(COUNTS)).tolist() == shares(COUNTS, 11)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    assert held_out(LABELS, 11, val_seed=0) == held_out(LABELS.tolist(), 11, val_seed=0) == val  # the global
    assert torch.equal(torch.get_rng_state(), state)  # generator, seeded otherwise, neither decides nor is drawn from
    other = held_out(LABELS, 11, val_seed=1)
    assert other != val and torch.bincount(LABELS[other], minlength=len(COUNTS)).tolist() == shares(COUNTS, 11)
    assert held_out(LABELS, 0, val_seed=0) == []


@pytest.mark.unit
def test_the_training_subset_is_taken_from_what_the_split_leaves() -> None:
    def labels() -> torch.Tensor:
        return LABELS

    whole = cut(DataConfig(name="fake", val_size=11), "train", len(LABELS), labels, [])
    small = cut(DataConfig(name="fake", val_size=11, train_size=20), "train", len(LABELS), labels, [])
    assert whole["val"] == small["val"] == held_out(LABELS, 11, 0)  # data.train_size does not move the split
    assert whole["train"] == complement(len(LABELS), held_out(LABELS, 11, 0))
    assert small["train"] is not None and whole["train"] is not None
    assert len(small["train"]) == 20 and set(small["train"]) < set(whole["train"])

    def unasked() -> torch.Tensor:
        raise AssertionError("labels are read only for a validation split")

    assert cut(DataConfig(name="fake", train_size=20), "train", 66, unasked, []) == {
        "train": subset_indices(66, 20, "data.train_size")}  # no split: the subset it always was
    assert cut(DataConfig(name="fake", val_size=11, test_size=5), "test", 66, unasked, []) == {
        "test": subset_indices(66, 5, "data.test_size")}
    with pytest.raises(UsageError, match=r"^data.train_size=60 exceeds the 55 images available \(data.val_size=11 are "
                                         r"held out for validation\); lower it or set data.train_size=null \(all\)$"):
        cut(DataConfig(name="fake", val_size=11, train_size=60), "train", len(LABELS), labels, [])


@pytest.mark.unit
@pytest.mark.parametrize("source", ["fake", "imagefolder", "cifar10"])
def test_both_data_paths_hold_out_the_same_images(tmp_path: Path, source: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The labels the split is drawn from: FakeData's drawn without its images, an image folder's file list,
    torchvision CIFAR's targets, against the tensor path's decoded labels."""
    monkeypatch.setattr(CHECK, unchecked)
    base = DataConfig(name="fake", train_size=30, test_size=4, val_size=6, val_seed=3, augment="flip_crop", cutout=4,
                      num_workers=0, loader="tensor")
    if source == "imagefolder":
        base = dataclasses.replace(base, name="imagefolder", root=str(_folder(tmp_path)), train_size=None,
                                   test_size=None)
    elif source == "cifar10":  # 40 training images, 4 a class
        base = dataclasses.replace(base, name="cifar10", root=str(write_cifar10(tmp_path)), download=False,
                                   train_size=None, test_size=None)
    tensor = build_data(base, seed=0)
    plain = build_data(dataclasses.replace(base, loader="torchvision"), seed=0)
    assert tensor.val is not None and plain.val is not None
    val = tensor.held_out()
    assert val is not None and len(val) == len(tensor.val) == len(plain.val) == 6 and plain.held_out() == val
    images, labels = tensor.to_model(tensor.val.__getitems__(range(6)), train=False)
    for index in range(6):  # the same images, never augmented (the tensor path's to_model(train=False) is plain)
        image, label = plain.val[index]
        torch.testing.assert_close(image, images[index], atol=1e-6, rtol=0)
        assert label == int(labels[index])
    assert not plain.val.random
    # Disjoint from the training images, which are all the others (data.train_size null; fake: 30 of 36).
    trained = tensor.train.rows
    assert trained is not None and set(trained).isdisjoint(val)
    assert sorted(trained + val) == list(range(len(trained) + 6)) and len(plain.train) == len(trained)
    assert (len(tensor.train), len(tensor.test)) == (len(plain.train), len(plain.test))


@pytest.mark.unit
def test_the_validation_batches_are_every_held_out_image_in_order_on_both_paths() -> None:
    """What tests/val_split_ranks.py launches on 2 processes, here on 1: the loaders agree, and val_batches() is the
    validation dataset, in order, not augmented, as test_batches() is the test set."""
    found = one_process()
    tensor, plain = found["tensor"], found["torchvision"]
    assert len(tensor["held_out"]) == 10 and tensor["held_out"] == plain["held_out"]
    assert tensor["val_labels"] == plain["val_labels"] and tensor["train_labels"] == plain["train_labels"]
    assert [len(batch) for batch in tensor["train_labels"][0]] == [8] * 5
    data = build_data(config("tensor").data, seed=0)
    assert data.val is not None and tensor["val_labels"] == data.val.labels.tolist()


def one_process() -> dict[str, dict[str, Any]]:
    """:func:`seen` of both data paths on this one process, as tests/val_split_ranks.py gathers them on several."""
    fresh_accelerate()
    try:
        accelerator = engine.build_accelerator(config(LOADERS[0]))
        return {loader: seen(accelerator, loader) for loader in LOADERS}
    finally:
        fresh_accelerate()


@pytest.mark.integration
def test_one_and_two_processes_hold_out_and_serve_the_same_images(tmp_path: Path) -> None:
    script = str(Path(__file__).with_name("val_split_ranks.py"))
    launched = subprocess.run(launch_command(2, script), cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                              timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = json.loads(launched.stdout.strip().splitlines()[-1])
    assert two["processes"] == 2
    assert two["seen"] == one_process()


@pytest.mark.unit
def test_the_data_fingerprint_names_the_held_out_images(tmp_path: Path) -> None:
    base = DataConfig(name="imagefolder", root=str(_folder(tmp_path / "folder")), val_size=3, num_workers=0)
    tensor = build_data(base, seed=0)
    keys = tensor.source_keys()
    assert keys is not None and set(keys) == {"train", "test", "val"}
    assert keys["val"] == digest(tensor.held_out() or [], keys["train"])
    assert build_data(dataclasses.replace(base, loader="torchvision"), seed=0).source_keys() == keys
    other = build_data(dataclasses.replace(base, val_seed=1), seed=0).source_keys()
    assert other is not None and other["train"] == keys["train"] and other["val"] != keys["val"]
    assert set(build_data(dataclasses.replace(base, val_size=0), seed=0).source_keys() or ()) == {"train", "test"}
    fake = DataConfig(name="fake", train_size=20, test_size=4, val_size=5, loader="torchvision")
    assert set(build_data(fake, seed=0).source_keys() or ()) == {"val"}  # no files to key, but the images held out
    assert build_data(dataclasses.replace(fake, val_size=0), seed=0).source_keys() is None


@pytest.mark.unit
def test_the_identity_rule_refuses_another_validation_split() -> None:
    saved = load_config(str(CONFIGS / "smoke.yaml"), ["data.val_size=20"])
    changes = run_changes(saved, load_config(str(CONFIGS / "smoke.yaml"), ["data.val_size=30", "data.val_seed=1"]))
    assert changes.refused == {"data.val_size": (20, 30), "data.val_seed": (0, 1)} and not changes.recorded


@pytest.mark.unit
def test_a_negative_size_or_a_seed_out_of_range_is_refused_in_one_line() -> None:
    for override, message in (("data.val_size=-1", "data.val_size=-1 must be >= 0 (0 = no validation split)"),
                              ("data.val_seed=-1", "data.val_seed=-1 must be from 0 to 4294967295"),
                              (f"data.val_seed={2**32}", f"data.val_seed={2**32} must be from 0 to 4294967295")):
        with pytest.raises(ConfigError) as raised:
            load_config(None, [override])
        assert str(raised.value) == message


@pytest.mark.unit
def test_a_split_that_leaves_a_class_no_training_image_is_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keeps = "lower data.val_size (each class keeps at least one training image)"
    with pytest.raises(UsageError) as raised:
        held_out(LABELS, 66, 0)
    assert str(raised.value) == f"data.val_size=66 leaves none of the 66 training images to train on; {keeps}"
    with pytest.raises(UsageError) as raised:
        held_out([0] + [1] * 9, 5, 0, ("cat", "dog"))  # 0.5 and 4.5: the tie goes to cat, its only image
    assert str(raised.value) == (f"data.val_size=5 of the 10 training images would hold out every image of class cat "
                                 f"(1); {keeps}")
    # At data-build time, before the run trains: one line, exit 2.
    root = _folder(tmp_path / "folder", per_class=2, classes=("cat", "dog"))
    refused = in_process(smoke(tmp_path, "refused", "data.name=imagefolder", f"data.root={root}", "data.val_size=3"),
                         capsys)
    assert refused.returncode == 2 and error_lines(refused.stderr) == [
        f"cifarlab: error: data.val_size=3 of the 4 training images would hold out every image of class cat (2); "
        f"{keeps}"]


@pytest.mark.unit
def test_the_console_and_the_run_record_name_the_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = check(in_process(smoke(tmp_path, "split", "data.train_size=32", "data.test_size=10", "data.val_size=8",
                                    "data.val_seed=4", "train.epochs=1"), capsys))
    assert "; 32 training (8 held out for validation, data.val_seed=4) and 10 test images" in result.stdout
    record = json.loads(RunDir(tmp_path / "runs" / "split").environment.read_text())
    assert set(record["starts"][0]["data_fingerprint"]) == {"val"}  # fake data: no files to key
