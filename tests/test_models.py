"""Models: shapes, the tutorial Net's exact size, clear errors for input sizes they cannot take."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarlab.config import ModelConfig
from cifarlab.errors import UsageError
from cifarlab.models import MODELS, build_model, check_input_size


def test_lenet_is_the_tutorial_net() -> None:
    model = build_model(ModelConfig(name="lenet"), num_classes=10)
    params = list(model.parameters())
    assert len(params) == 10
    assert sum(p.numel() for p in params) == 62_006


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shapes(name: str) -> None:
    model = build_model(ModelConfig(name=name), num_classes=10)
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    check_input_size(name, 3, 32, 32)


def test_convnet_bn_has_batchnorm_and_resnet18_size() -> None:
    convnet = build_model(ModelConfig(name="convnet_bn"), 10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in convnet.modules())
    resnet = build_model(ModelConfig(name="resnet18"), 10)
    assert 11_000_000 < sum(p.numel() for p in resnet.parameters()) < 11_300_000
    stem = resnet.stem[0]
    assert isinstance(stem, nn.Conv2d) and stem.kernel_size == (3, 3) and stem.stride == (1, 1)


def test_input_size_errors_say_what_is_accepted() -> None:
    with pytest.raises(UsageError, match=r"model.name=lenet cannot take 3x64x64 inputs: it accepts 3-channel 32x32"):
        check_input_size("lenet", 3, 64, 64)
    with pytest.raises(UsageError, match="accepts 3-channel square images of at least 8x8"):
        check_input_size("resnet18", 3, 4, 4)
    with pytest.raises(UsageError, match="cannot take 1x32x32"):
        check_input_size("convnet_bn", 1, 32, 32)
    check_input_size("resnet18", 3, 64, 64)
    # The check matches the network: global-pooled models really run at other sizes.
    build_model(ModelConfig(name="resnet18"), 10).eval()(torch.randn(1, 3, 64, 64))
