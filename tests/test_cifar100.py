"""CIFAR-100 and 100-class runs: the class table, top-5 accuracy, pictures that stay legible, the real
torchvision readers through the CLI on synthetic copies, a 100-class run's reports, W&B keys and media,
and unreadable images in an image folder named in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_cifar import CHECK, SCRIPT, unchecked, write_cifar10, write_cifar100

from cifarlab import evaluate as evaluate_command
from cifarlab import predict as predict_command
from cifarlab import train as train_command
from cifarlab.config import CIFAR10_CLASSES, DataConfig
from cifarlab.data.classes import CIFAR100_CLASSES, CIFAR100_SUPERCLASSES, config_classes, most_confused, superclasses
from cifarlab.report import plots
from cifarlab.report.metrics import EvalResult

from conftest import check, cli_env, error_lines, metrics, per_class, run_python, smoke
from wandb_offline import find_run_files, read_history


def run_unchecked(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` with torchvision's CIFAR checksums skipped (tests/synthetic_cifar.py)."""
    return subprocess.run([sys.executable, SCRIPT, module, *args], cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=300)


# --- unit: the class table, top-5, pictures -------------------------------------------------------------

@pytest.mark.unit
def test_cifar100_class_table() -> None:
    assert len(CIFAR100_CLASSES) == len(set(CIFAR100_CLASSES)) == 100
    assert [len(fine) for fine in CIFAR100_SUPERCLASSES.values()] == [5] * 20
    # Landmarks of the meta file's label order (fine_label_names).
    assert [CIFAR100_CLASSES[i] for i in (0, 1, 19, 46, 58, 99)] == [
        "apple", "aquarium_fish", "cattle", "man", "pickup_truck", "worm"]
    groups = superclasses(CIFAR100_CLASSES)
    assert groups is not None and groups[0] == ("aquatic_mammals", [4, 30, 55, 72, 95])
    assert superclasses(CIFAR10_CLASSES) is None and superclasses(CIFAR100_CLASSES[::-1]) is None
    assert config_classes(DataConfig(name="cifar100")) == config_classes(DataConfig(name="fake", num_classes=100))
    assert config_classes(DataConfig(name="imagefolder")) == config_classes(DataConfig()) == CIFAR10_CLASSES


@pytest.mark.unit
def test_top5_accuracy_from_the_logits() -> None:
    classes = tuple(f"c{i}" for i in range(8))
    logits = torch.tensor([[8.0, 7, 6, 5, 4, 3, 2, 1]] * 4)
    labels = torch.tensor([0, 4, 5, 7])  # top-1 right, 5th, 6th, last
    result = EvalResult.from_predictions(logits.argmax(1), labels, torch.zeros(4), classes, logits)
    assert (result.accuracy, result.top5) == (0.25, 0.5)
    assert result.per_class_top5["c4"] == 1.0 and result.per_class_top5["c5"] == 0.0
    assert np.isnan(result.per_class_top5["c1"])  # no test images
    values = result.values()
    assert values["test/acc_top5"] == 0.5 and list(values)[:2] == ["test/acc", "test/acc_top5"]
    five = EvalResult.from_predictions(labels % 5, labels % 5, torch.zeros(4), classes[:5], logits[:, :5])
    assert five.top5 is None and "test/acc_top5" not in five.values()


@pytest.mark.unit
def test_pictures_stay_legible_at_100_classes() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 100, (3000,), generator=generator)
    preds = torch.where(torch.rand(3000, generator=generator) < 0.4, labels,
                        torch.randint(0, 100, (3000,), generator=generator))
    confusion = torch.bincount(labels * 100 + preds, minlength=10_000).reshape(100, 100).tolist()
    cifar100 = plots.confusion_image(confusion, CIFAR100_CLASSES)
    others = plots.confusion_image(confusion, [f"class{i:02d}" for i in range(100)])
    # A 20 x 20 superclass matrix above the most-confused pairs, not 100 x 100 cells of 44 pixels.
    assert cifar100.width < 1000 and 700 < cifar100.height < 1400
    assert others.width < 1000 and others.height < 400
    assert len(most_confused(confusion, 20)) == 20
    images = torch.randn(16, 3, 32, 32)
    grid = plots.labelled_grid(images, labels[:16], CIFAR100_CLASSES, [0.5] * 3, [0.25] * 3, preds=preds[:16])
    assert grid.size == (8 * 98 + 2, 2 * (96 + 24 + 2) + 2)  # two caption lines: prediction, (true class)
    font = plots.ImageFont.load_default()
    assert plots.fit("large_man-made_outdoor_things", font, 94).endswith(".")
    assert font.getlength(plots.fit("large_man-made_outdoor_things", font, 94)) <= 94


# --- integration: the real readers through the CLI ---------------------------------------------------------

@pytest.fixture(scope="module")
def cifar_copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic CIFAR-10 (40 train, 20 test) and CIFAR-100 (50, 20) in torchvision's format, one root."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(write_cifar10(root))
    return root


DefaultRun = Callable[[str, str], tuple[Path, str]]


@pytest.fixture(scope="module")
def default_run(cifar_copies: Path, tmp_path_factory: pytest.TempPathFactory) -> DefaultRun:
    """``default_run(name, loader)``: the default command (no --config) with data.name and data.loader set, on the
    copy in torchvision's format, trained once per module; its run directory and output. The evaluate and predict
    test reads the CIFAR-100 run on the tensor path (the default loader)."""
    runs: dict[tuple[str, str], tuple[Path, str]] = {}

    def run(name: str, loader: str) -> tuple[Path, str]:
        if (name, loader) not in runs:
            out = tmp_path_factory.mktemp(f"{name}-{loader}")
            result = check(run_unchecked("cifarlab.train", [
                f"data.name={name}", f"data.root={cifar_copies}", f"data.loader={loader}", "data.num_workers=1",
                "data.download=false", "train.batch_size=10", "train.eval_batch_size=10", "train.epochs=1",
                "logging.wandb.mode=disabled", f"train.output_dir={out / 'runs'}", "train.run_name=r"], out))
            runs[name, loader] = out / "runs" / "r", result.stdout
        return runs[name, loader]

    return run


# The readers (data.name) and the data paths (data.loader) are independent: build_data reads the set with
# torchvision's CIFAR10 or CIFAR100 whatever the loader, and the tensor path decodes what the reader returns once
# where the torchvision path transforms it per image. Each reader and each path is run once here (diagonally);
# test_data.py::test_torchvisions_cifar_readers_on_both_paths checks all four pairs in-process, image by image.
@pytest.mark.integration
@pytest.mark.parametrize("name, loader", [("cifar10", "torchvision"), ("cifar100", "tensor")])
def test_the_default_command_trains_on_torchvisions_cifar(default_run: DefaultRun, name: str, loader: str) -> None:
    """The default command (no --config) with data.name and data.loader set, on a copy in torchvision's format."""
    run_dir, stdout = default_run(name, loader)
    classes = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
    assert json.loads((run_dir / "classes.json").read_text()) == list(classes)
    (record,) = metrics(run_dir)
    assert record["test/images"] == 20 and 0 <= record["test/acc"] <= record["test/acc_top5"] <= 1
    assert set(per_class(record)) == set(classes)
    assert "top-5" in stdout and ("superclass" in stdout) == (name == "cifar100")


@pytest.mark.integration
def test_evaluate_and_predict_on_a_cifar100_run(default_run: DefaultRun, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The commands' own main() in this process (nothing here needs a process of its own), on the checked-out copy."""
    monkeypatch.setattr(CHECK, unchecked)
    run_dir, _ = default_run("cifar100", "tensor")
    png = tmp_path / "confusion.png"
    capsys.readouterr()
    assert evaluate_command.main(["--checkpoint", str(run_dir), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "top-5" in out and "(20 images)" in out
    assert "superclass" in out and "large_man-made_outdoor_things" in out and "most confused pairs of 100" in out
    with Image.open(png) as image:
        assert image.width < 1000 and image.height < 1400
    image_file = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(image_file)
    assert predict_command.main(["--checkpoint", str(run_dir), "--top-k", "5", str(image_file)]) == 0
    path, ranked = capsys.readouterr().out.strip().split(": ", 1)
    assert path == str(image_file) and len(ranked.split(", ")) == 5
    assert all(item.rsplit(" ", 2)[0] in CIFAR100_CLASSES for item in ranked.split(", "))


@pytest.mark.integration
def test_a_100_class_run_reports_readably_and_logs_every_class(tmp_path: Path) -> None:
    """Fake data with CIFAR-100's 100 classes, W&B offline: the console shows 20 superclass rows and top-5;
    metrics.jsonl and W&B get test/acc_top5 and all 100 test/acc/<class>; W&B gets the pictures."""
    result = check(run_python(smoke(tmp_path, "hundred", "data.num_classes=100", "data.test_size=300",
                                    "train.epochs=1", "logging.wandb.mode=offline"), tmp_path))
    out = result.stdout
    table = [line for line in out.splitlines() if line.startswith("│")]
    assert len(table) == 20 and all(line.split("│")[1].strip() in CIFAR100_SUPERCLASSES for line in table)
    assert "top-5" in out and "apple" not in out
    run_dir = tmp_path / "runs" / "hundred"
    (record,) = metrics(run_dir)
    assert set(per_class(record)) == set(CIFAR100_CLASSES) and "test/acc_top5" in record
    (run_file,) = find_run_files(run_dir / "wandb")
    rows = read_history(run_file)
    (evaluation,) = [row for row in rows if "test/acc" in row]
    assert evaluation["test/acc_top5"] == pytest.approx(record["test/acc_top5"])
    assert {f"test/acc/{name}" for name in CIFAR100_CLASSES} <= evaluation.keys()
    media = {key: value for row in rows for key, value in row.items() if isinstance(value, dict) and "_type" in value}
    for key in ("media/train_images", "media/test_predictions", "media/confusion_matrix"):
        assert media[key]["_type"] == "image-file"
        assert (run_file.parent / "files" / media[key]["path"]).is_file()
    assert media["test/confusion_matrix_table"]["_type"] == "table-file"


def _folder_with_an_unreadable_image(root: Path) -> tuple[list[str], Path]:
    """An image folder (2 classes, 6 images a split) whose train/cat/0001.jpg is text; the trainer's arguments
    for it (W&B off, runs under ``root/runs``) and that file."""
    noise = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(6):
                image = noise.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / "data" / split / name / f"{i:04d}.jpg")
    bad = root / "data" / "train" / "cat" / "0001.jpg"
    bad.write_text("not an image\n")
    return ["data.name=imagefolder", f"data.root={root / 'data'}", "data.num_workers=1", "train.batch_size=4",
            "train.epochs=1", "logging.wandb.mode=disabled", f"train.output_dir={root / 'runs'}"], bad


@pytest.mark.unit
def test_an_unreadable_image_decoded_for_the_tensor_path_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The tensor path decodes every image before training starts: the trainer's main() refuses in this process."""
    arguments, bad = _folder_with_an_unreadable_image(tmp_path)
    capsys.readouterr()
    assert train_command.main([*arguments, "data.loader=tensor"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == error_lines(err) == [
        f"cifarlab: error: cannot read image {bad} (cannot identify image file); remove or replace it"]


@pytest.mark.integration
def test_an_unreadable_image_read_by_a_loader_worker_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The torchvision path decodes in a DataLoader worker, during training: its error must still reach the user as
    one line, and nothing else on stderr (a process of its own: all the trainer prints)."""
    arguments, bad = _folder_with_an_unreadable_image(tmp_path)
    result = run_python([*arguments, "data.loader=torchvision"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == error_lines(result.stderr) == [
        f"cifarlab: error: cannot read image {bad} (cannot identify image file); remove or replace it"]
