"""cifarlab.predict on a real smoke run: every checkpoint form, any image size or mode, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cifarlab import predict
from cifarlab.config import DataConfig, ModelConfig, load_config
from cifarlab.models import build_model

from conftest import check, cli_env, error_lines, in_process, smoke

LINE = re.compile(r"^(?P<path>.+?): (?P<ranked>.+)$")


def run_predict(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cifarlab.predict", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=120)


def parse(stdout: str) -> dict[str, list[tuple[str, float]]]:
    """``PATH: cat 63.1 %, dog 20.2 %`` lines -> {path: [(class, percent), ...]}."""
    parsed = {}
    for line in stdout.splitlines():
        found = LINE.match(line)
        assert found, line
        ranked = [item.rsplit(" ", 2) for item in found["ranked"].split(", ")]
        assert all(unit == "%" for _, _, unit in ranked), line
        parsed[found["path"]] = [(name, float(percent)) for name, percent, _ in ranked]
    return parsed


@pytest.fixture
def run_dir(one_epoch_reference: Path) -> Path:
    """A real one-epoch smoke run, the session's (conftest): model.safetensors, config.yaml, classes.json,
    checkpoints/. Read, never written."""
    return one_epoch_reference


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    noise = np.random.default_rng(0)
    Image.fromarray(noise.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(folder / "rgb.png")
    Image.fromarray(noise.integers(0, 256, (60, 100), dtype=np.uint8), "L").save(folder / "gray.png")  # 100 wide
    (folder / "x.png").write_text("not an image\n")
    (folder / "fake.jpg").write_text("a text file named .jpg\n")
    whole = folder / "whole.png"
    Image.fromarray(noise.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(whole)
    (folder / "truncated.png").write_bytes(whole.read_bytes()[:300])
    (folder / "album").mkdir()
    return folder


def classes(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "classes.json").read_text())


@pytest.mark.integration
def test_cli_on_a_run_directory(run_dir: Path, images: Path) -> None:
    # `python -m cifarlab.predict` itself: the other tests call its main() in this process.
    result = check(run_predict("--checkpoint", str(run_dir), "rgb.png", "gray.png", cwd=images))
    parsed = parse(result.stdout)
    assert list(parsed) == ["rgb.png", "gray.png"]  # paths as given, in order
    for ranked in parsed.values():
        assert len(ranked) == 3  # --top-k defaults to 3
        assert {name for name, _ in ranked} <= set(classes(run_dir))
        assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    # The grayscale 100x60 image says what was done to it; the 32x32 RGB one needs nothing.
    assert result.stderr.splitlines() == [
        "cifarlab: note: gray.png: converted from mode L to RGB; resized from 100x60 to 32x32"]


@pytest.mark.integration
def test_every_checkpoint_form_gives_the_same_answer(run_dir: Path, images: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    outputs = {}
    step = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    forms = {"run": run_dir, "weights": run_dir / "model.safetensors",
             "best": run_dir / "checkpoints" / "best", "last step": step}
    for form, path in forms.items():
        assert predict.main(["--checkpoint", str(path), "--top-k", "5", str(images / "rgb.png")]) == 0, form
        outputs[form] = capsys.readouterr().out
    # One epoch: the final weights, the best checkpoint and the last step checkpoint are the same model.
    assert len(set(outputs.values())) == 1, outputs
    assert len(parse(outputs["run"])[str(images / "rgb.png")]) == 5


@pytest.mark.integration
def test_top_10_covers_every_class_and_sums_to_100(run_dir: Path, images: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(images / "rgb.png"), str(images / "gray.png")]
    assert predict.main(["--checkpoint", str(run_dir), "--top-k", "10", *paths]) == 0
    for ranked in parse(capsys.readouterr().out).values():
        assert sorted(name for name, _ in ranked) == sorted(classes(run_dir))
        assert sum(p for _, p in ranked) == pytest.approx(100, abs=0.5)  # ten values rounded to 0.1


@pytest.mark.integration
def test_probabilities_are_the_trained_models(run_dir: Path, images: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Recompute by hand from the safetensors weights and the run's normalisation."""
    config = load_config(str(run_dir / "config.yaml"))
    model = build_model(ModelConfig(name=config.model.name), 10)
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    pixels = np.asarray(Image.open(images / "rgb.png"), dtype=np.float32) / 255
    mean, std = config.data.normalization()  # the smoke run's data.mean/std are null: the dataset's own
    normalised = (pixels - np.array(mean)) / np.array(std)
    with torch.no_grad():
        logits = model.eval()(torch.tensor(normalised, dtype=torch.float32).permute(2, 0, 1)[None])
    expected = torch.softmax(logits, 1)[0] * 100
    assert predict.main(["--checkpoint", str(run_dir), "--top-k", "10", str(images / "rgb.png")]) == 0
    for name, percent in parse(capsys.readouterr().out)[str(images / "rgb.png")]:
        assert percent == pytest.approx(float(expected[classes(run_dir).index(name)]), abs=0.051)


@pytest.mark.unit
def test_prepare_converts_and_resizes() -> None:
    picture = predict.Picture("a.png", Image.new("RGBA", (40, 20), (255, 0, 0, 128)))
    tensor, notes = predict.prepare(picture, DataConfig(mean=[0.5] * 3, std=[0.5] * 3))
    assert notes == ["converted from mode RGBA to RGB", "resized from 40x20 to 32x32"]
    assert tensor.shape == (3, 32, 32)
    assert torch.allclose(tensor[0], torch.ones(32, 32)) and torch.allclose(tensor[1], -torch.ones(32, 32))
    # Real data is 32x32 whatever data.image_size says; synthetic data is data.image_size.
    assert predict.prepare(picture, DataConfig(name="cifar10", image_size=64))[0].shape == (3, 32, 32)
    assert predict.prepare(picture, DataConfig(name="fake", image_size=16))[0].shape == (3, 16, 16)
    rgb = predict.Picture("b.png", Image.new("RGB", (32, 32)))
    assert predict.prepare(rgb, DataConfig())[1] == []


@pytest.mark.parametrize("args, message", [
    (["nope.png"], "image nope.png: no such file"),
    (["x.png"], "image x.png: not an image PIL can read"),
    (["album"], "image album: is a directory; pass image files, e.g. album/*.png"),
    (["--top-k", "0", "rgb.png"], "--top-k 0: pass --top-k 1 or more"),
    (["--top-k", "11", "rgb.png"], "--top-k 11: the model has 10 classes; pass --top-k between 1 and 10"),
])
@pytest.mark.integration
def test_bad_arguments_are_one_line(run_dir: Path, images: Path, args: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(images)
    assert predict.main(["--checkpoint", str(run_dir), *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"cifarlab: error: {message}"), line


@pytest.mark.integration
def test_bad_images_among_good_ones_are_reported_and_the_rest_predicted(
        run_dir: Path, images: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(images)
    result = in_process(["--checkpoint", str(run_dir), "rgb.png", "fake.jpg", "gray.png", "truncated.png",
                         "nope.png", "album"], capsys, module="cifarlab.predict")
    assert result.returncode == 2  # some images failed
    assert list(parse(result.stdout)) == ["rgb.png", "gray.png"]  # every readable image, in order
    errors = error_lines(result.stderr)
    assert [line.split(":")[2].strip() for line in errors] == ["image fake.jpg", "image truncated.png",
                                                               "image nope.png", "image album"]
    assert errors[0].startswith("cifarlab: error: image fake.jpg: not an image PIL can read (cannot identify")
    assert "truncated" in errors[1] or "Truncated" in errors[1]
    # Nothing else on stderr but the one note on the grayscale image.
    assert [line for line in result.stderr.splitlines() if line not in errors] == [
        "cifarlab: note: gray.png: converted from mode L to RGB; resized from 100x60 to 32x32"]
    # The predictions are those of a call with the good images alone.
    alone = check(in_process(["--checkpoint", str(run_dir), "rgb.png", "gray.png"], capsys, module="cifarlab.predict"))
    assert alone.stdout == result.stdout


@pytest.mark.unit
def test_cli_errors_exit_2_with_one_line(images: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(images)
    result = in_process(["--checkpoint", str(images / "nowhere"), "rgb.png"], capsys, module="cifarlab.predict")
    assert result.returncode == 2 and result.stdout == ""
    assert error_lines(result.stderr) == [
        f"cifarlab: error: --checkpoint {images / 'nowhere'}: no model.safetensors there; pass a run directory, "
        f"its model.safetensors, or a folder under <run>/checkpoints/"]
    assert result.stderr.count("\n") == 1
    # Images are checked before the model is loaded: a bad image is reported even with a bad checkpoint.
    result = in_process(["--checkpoint", str(images / "nowhere"), "x.png"], capsys, module="cifarlab.predict")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("cifarlab: error: image x.png: not an image PIL can read")


@pytest.mark.integration
def test_a_file_that_is_not_safetensors_is_refused(run_dir: Path, images: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pickle_file = run_dir / "checkpoints" / "best" / "optimizer.bin"
    assert predict.main(["--checkpoint", str(pickle_file), str(images / "rgb.png")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "is not a readable safetensors file" in line


@pytest.mark.unit
def test_top_k_applies_the_runs_test_time_augmentation() -> None:
    model = build_model(ModelConfig(name="lenet"), 10)
    batch = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.softmax((model.eval()(batch) + model(batch.flip(3))) / 2, dim=1) * 100
    ranked = predict.top_k(model, batch, [str(i) for i in range(10)], k=10, tta="flip")
    for row, probabilities in zip(ranked, expected):
        for name, percent in row:
            assert percent == pytest.approx(float(probabilities[int(name)]), abs=1e-4)


@pytest.mark.integration
def test_the_default_top_k_shows_every_class_of_a_model_with_fewer_than_three(
        tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A newcomer's two-class folder: no --top-k needed (the default was 3, refused for 2 classes)."""
    check(in_process(smoke(tmp_path, "two", "data.num_classes=2", "train.epochs=1", "data.loader=tensor"), capsys))
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(tmp_path / "runs" / "two"), str(images / "rgb.png")]) == 0
    (ranked,) = parse(capsys.readouterr().out).values()
    assert len(ranked) == 2 and {name for name, _ in ranked} == set(classes(tmp_path / "runs" / "two"))
