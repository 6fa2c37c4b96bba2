"""Models: shapes, the tutorial Net's exact size, clear errors for input sizes they cannot take, and
fastnet's whitening stem and frozen parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarlab.config import ModelConfig, OptimConfig
from cifarlab.errors import UsageError
from cifarlab.models import MODELS, FastNet, Whitening, build_model, check_input_size, init_whitening
from cifarlab.run.engine import build_optimizer

pytestmark = pytest.mark.unit


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


def smooth_images(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    """Images with strongly correlated neighbouring pixels and channels, like photographs: noise
    upsampled 4x, colours mixed through a shared grey component, plus a little pixel noise so
    no patch direction has near-zero variance (which eps would damp instead of whiten)."""
    g = torch.Generator().manual_seed(seed)
    coarse = nn.functional.interpolate(torch.randn(n, 3, size // 4, size // 4, generator=g), size=size, mode="bilinear")
    mixed = coarse + 2 * coarse.mean(1, keepdim=True)
    return mixed + 0.3 * torch.randn(n, 3, size, size, generator=g)


def test_fastnet_shape_and_documented_size() -> None:
    model = MODELS["fastnet"](num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    params = list(model.parameters())
    assert len(params) == 21
    assert sum(p.numel() for p in params) == 1_972_792
    assert sum(p.numel() for p in params if p.requires_grad) == 1_971_328
    assert "1,972,792 parameters in 21 tensors, of which 1,971,328 are trained" in " ".join(FastNet.__doc__.split())


def test_init_whitening_whitens_2x2_patches() -> None:
    images = smooth_images(2000)
    patches = nn.functional.unfold(images.double(), 2).transpose(1, 2).reshape(-1, 12)
    assert torch.corrcoef(patches.T).abs().triu(1).max() > 0.8  # the data really are correlated
    model = FastNet(num_classes=10)
    assert init_whitening(model, images)
    out = model.stem(images).double()
    assert out.shape == (2000, 24, 15, 15)
    positive = out[:, :12].transpose(0, 1).reshape(12, -1)
    assert positive.mean(1).abs().max() < 1e-4
    # Unit variance up to eps: every direction has variance >= 0.3 ** 2, so lambda / (lambda + eps) > 0.99.
    torch.testing.assert_close(torch.cov(positive), torch.eye(12, dtype=torch.float64), atol=1e-2, rtol=0)
    torch.testing.assert_close(out[:, 12:], -out[:, :12])


def test_init_whitening_is_deterministic_and_leaves_other_models_alone() -> None:
    images = smooth_images(500, seed=1)
    first, second = FastNet(num_classes=10), FastNet(num_classes=10)
    assert init_whitening(first, images) and init_whitening(second, images)
    assert torch.equal(first.stem.weight, second.stem.weight) and torch.equal(first.stem.bias, second.stem.bias)
    lenet = build_model(ModelConfig(name="lenet"), 10)
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    assert not init_whitening(lenet, images)
    assert all(torch.equal(v, before[k]) for k, v in lenet.state_dict().items())


def test_fastnet_trains_without_touching_frozen_parameters() -> None:
    torch.manual_seed(0)
    model = FastNet(num_classes=10)
    # 16x16 keeps 20 steps to about a second on a CPU; the network is global-pooled, so only speed changes.
    images, labels = smooth_images(16, seed=2), torch.randint(0, 10, (16,))
    init_whitening(model, images)
    assert isinstance(model.stem, Whitening)
    frozen = [model.stem.weight, model.stem.bias] + [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(p.requires_grad for p in frozen)
    frozen_ids = {id(p) for p in frozen}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # The trainer's own optimizer, weight decay included: frozen tensors get no gradient, hence no decay.
    optimizer = build_optimizer(OptimConfig(lr=0.05, weight_decay=5e-4), model)
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (id(p) in frozen_ids), name
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", ["lenet", "convnet_bn", "fastnet"])
def test_declared_input_sides_are_the_networks_own(name: str) -> None:
    model = MODELS[name](num_classes=10).eval()
    runs = []
    for side in range(1, 41):
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, side, side))
            runs.append(side)
        except RuntimeError:
            pass
    low, high = model.input_sides
    assert runs == list(range(low, (high or 40) + 1))
    for side in range(1, 41):
        fits = side in runs
        if fits:
            check_input_size(name, 3, side, side)
        else:
            with pytest.raises(UsageError):
                check_input_size(name, 3, side, side)


def test_fastnet_input_sizes() -> None:
    check_input_size("fastnet", 3, 32, 32)
    check_input_size("fastnet", 3, 9, 9)
    with pytest.raises(UsageError, match=r"model.name=fastnet cannot take 3x8x8 inputs: it accepts 3-channel "
                                         r"square images of at least 9x9"):
        check_input_size("fastnet", 3, 8, 8)
    # The minimum is the network's own: 9x9 runs (stem 8x8, pools to 4, 2, 1); 8x8 does not.
    model = FastNet(num_classes=10).eval()
    assert model(torch.randn(1, 3, 9, 9)).shape == (1, 10)
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 8, 8))
