"""cifarlab.summary and the layer table it prints (cifarlab.models.summary): per-layer shapes and counts, the size
formula, and where a wrong input size breaks."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from cifarlab import summary
from cifarlab.config import ModelConfig
from cifarlab.models import MODELS, build_model
from cifarlab.models.summary import BrokenAt, layer_summary, totals

from conftest import CONFIGS, REPO, check, cli_env, error_lines, in_process


def run_summary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cifarlab.summary", *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=120)


def table_rows(stdout: str) -> dict[str, list[str]]:
    """Table body rows by layer name; cells split on the box character (ASCII '|' in non-UTF-8 locales)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│|]", line)[1:-1]]
        if len(cells) == 5 and cells[0] not in ("", "layer"):
            rows[cells[0]] = cells
    return rows


def lenet() -> nn.Module:
    return build_model(ModelConfig(name="lenet"), 10)


@pytest.mark.unit
def test_lenet_rows_are_the_tutorial_numbers() -> None:
    rows = layer_summary(lenet(), (1, 3, 32, 32))
    assert [(r.name, r.call) for r in rows] == [("conv1", 1), ("pool", 1), ("conv2", 1), ("pool", 2),
                                                ("fc1", 1), ("fc2", 1), ("fc3", 1)]
    by_call = {(r.name, r.call): r for r in rows}
    assert by_call["conv1", 1].output_shape == (1, 6, 28, 28)
    assert by_call["conv1", 1].formula == "(32 - 5 + 2*0)/1 + 1 = 28"
    assert by_call["pool", 2].input_shape == (1, 16, 10, 10)
    assert by_call["pool", 2].output_shape == (1, 16, 5, 5)
    assert by_call["pool", 2].formula == "(10 - 2 + 2*0)/2 + 1 = 5"
    assert by_call["fc1", 1].params == 16 * 5 * 5 * 120 + 120 and by_call["fc1", 1].formula is None
    assert rows[-1].output_shape == (1, 10)
    # The reused pool is counted once, so the rows add up to the model's total.
    total = totals(lenet())
    assert sum(r.params for r in rows) == total.parameters == total.trainable == 62_006
    assert total.tensors == 10


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(MODELS))
def test_rows_add_up_and_formulas_match_the_shapes(name: str) -> None:
    model = build_model(ModelConfig(name=name), 10)
    model.train()
    rows = layer_summary(model, (1, 3, 32, 32))
    assert sum(r.params for r in rows) == totals(model).parameters
    assert rows[-1].output_shape == (1, 10)
    sized = [r for r in rows if r.formula is not None]
    assert sized, "every model has Conv2d layers"
    for row in sized:  # the formula's result is what PyTorch produced
        assert int(row.formula.rsplit("= ", 1)[1]) == row.output_shape[-1], row
    # The summary leaves the model as it found it: training mode back, no hooks left behind.
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.unit
def test_strided_conv_formula_says_it_rounds_down() -> None:
    rows = layer_summary(build_model(ModelConfig(name="resnet18"), 10), (1, 3, 32, 32))
    strided = next(r for r in rows if r.name == "layers.2.conv1")
    assert strided.formula == "floor((32 - 3 + 2*1)/2) + 1 = 16"
    assert strided.output_shape == (1, 128, 16, 16)


@pytest.mark.unit
def test_too_large_input_breaks_at_fc1() -> None:
    with pytest.raises(BrokenAt) as caught:
        layer_summary(lenet(), (1, 3, 64, 64))
    assert caught.value.layer == "fc1"
    assert caught.value.reason == "Linear expects 400 features, got 2704"
    assert caught.value.rows[-1].output_shape == (1, 16, 13, 13)  # the last layer that ran: pool, 2nd call


@pytest.mark.unit
def test_too_small_input_breaks_where_the_formula_reaches_zero() -> None:
    with pytest.raises(BrokenAt) as caught:
        layer_summary(lenet(), (1, 3, 4, 4))
    assert caught.value.layer == "conv1"
    assert caught.value.reason == "Conv2d on a 4x4 map: (4 - 5 + 2*0)/1 + 1 = 0"
    with pytest.raises(BrokenAt, match=r"it breaks at features\.5 \(MaxPool2d on a 1x1 map"):
        layer_summary(build_model(ModelConfig(name="convnet_bn"), 10), (1, 3, 2, 2))


@pytest.mark.integration
def test_cli_tutorial_table() -> None:
    # `python -m cifarlab.summary` itself (its stdout piped): the other tests call its main() in this process.
    result = check(run_summary("--config", str(CONFIGS / "tutorial.yaml")))
    assert result.stderr == ""
    rows = table_rows(result.stdout)
    assert list(rows) == ["conv1", "pool", "conv2", "pool (call 2)", "fc1", "fc2", "fc3"]
    assert rows["conv1"] == ["conv1", "Conv2d", "(1, 6, 28, 28)", "456", "(32 - 5 + 2*0)/1 + 1 = 28"]
    assert rows["pool (call 2)"][2] == "(1, 16, 5, 5)"
    assert rows["fc1"][3] == "48,120"
    assert "parameters: 62,006\ntrainable: 62,006\ntensors: 10" in result.stdout


@pytest.mark.unit
def test_cli_input_size_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    result = in_process(["--config", str(CONFIGS / "smoke.yaml"), "data.image_size=64"], capsys,
                        module="cifarlab.summary")
    assert result.returncode == 2 and result.stdout == ""
    assert error_lines(result.stderr) == [
        "cifarlab: error: model.name=lenet cannot take 3x64x64 inputs: it breaks at fc1 (Linear expects 400 "
        "features, got 2704); it accepts 3-channel 32x32 to 35x35 images, since fc1 expects a 16x5x5 feature "
        "map; resize the data (data.image_size for fake data) or pick another model.name"
    ]
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("overrides, message", [
    (["model.name=resnet18", "data.name=fake", "data.image_size=4"],
     # It runs in PyTorch, but the trainer would refuse it: the summary says so too.
     "model.name=resnet18 cannot take 3x4x4 inputs: it accepts 3-channel square images of at least 8x8"),
    (["model.name=convnet_bn", "data.name=fake", "data.image_size=3"],
     "model.name=convnet_bn cannot take 3x3x3 inputs: it breaks at features.5 (MaxPool2d on a 1x1 map: "
     "floor((1 - 2 + 2*0)/2) + 1 = 0); it accepts 3-channel square images of at least 4x4"),
    (["model.nam=lenet"], "unknown config key 'model.nam'"),
])
@pytest.mark.unit
def test_main_reports_user_errors(overrides: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert summary.main(overrides) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"cifarlab: error: {message}")


@pytest.mark.unit
def test_main_other_sizes_and_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert summary.main(["data.name=fake", "data.image_size=33"]) == 0  # lenet's other accepted size
    rows = table_rows(capsys.readouterr().out)
    assert rows["conv1"][2] == "(1, 6, 29, 29)" and rows["pool (call 2)"][2] == "(1, 16, 5, 5)"
    assert summary.main(["model.name=convnet_bn", "data.image_size=64"]) == 0
    out, err = capsys.readouterr()
    assert table_rows(out)["features.7"][2] == "(1, 128, 1, 1)"  # AdaptiveAvgPool2d: any size in, 1x1 out
    assert "data.image_size=64 sizes only this summary's input" in err  # cifar10 trains on 32x32 regardless
    assert torch.is_grad_enabled()
