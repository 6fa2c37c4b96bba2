"""Networks for 3-channel CIFAR-scale images, and the input sizes each accepts; ghost BatchNorm (``batchnorm``) and
a model's layers as a table of shapes, parameters and size formulas (``summary``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.config import ModelConfig
from cifarlab.errors import UsageError
from cifarlab.models.batchnorm import convert_ghost_batchnorm


class Classifier(nn.Module):
    """What every network here declares: the input side lengths it takes, (smallest, largest or None for
    any), and the same in words."""

    input_sides: tuple[int, Optional[int]]
    accepts: str


class LeNet(Classifier):
    """The PyTorch tutorial's Net: two 5x5 convs with max-pooling, three linear layers.

    62,006 parameters in 10 tensors. The flatten assumes a 16x5x5 feature map, which only 32x32 to
    35x35 inputs produce (each pool rounds down): 32 -> 28 -> 14 -> 10 -> 5 and 35 -> 31 -> 15 -> 11 -> 5.
    """

    input_sides = (32, 35)
    accepts = "32x32 to 35x35 images, since fc1 expects a 16x5x5 feature map"

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ConvNetBN(Classifier):
    """A small VGG-style ConvNet with BatchNorm2d (about 0.29M parameters), global-pooled so
    any input of at least 4x4 works."""

    input_sides = (4, None)
    accepts = "square images of at least 4x4"

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(3, 32), _conv_bn(32, 32), nn.MaxPool2d(2),
            _conv_bn(32, 64), _conv_bn(64, 64), nn.MaxPool2d(2),
            _conv_bn(64, 128), nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(Classifier):
    """ResNet-18 for 32x32 inputs: a 3x3 stride-1 stem and no max-pool (ImageNet's 7x7 stem
    and pool would shrink CIFAR images to 8x8 before the first block)."""

    # It runs on smaller inputs too, but below 8x8 its last stage sees a single pixel.
    input_sides = (8, None)
    accepts = "square images of at least 8x8"

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c_in = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


class Whitening(nn.Conv2d):
    """A frozen 2x2 conv whose 24 filters are set from data by ``init_whitening``: 12 PCA-whitening
    filters of the 2x2x3 patches and their negatives. Fixed filters cost nothing to learn, and
    decorrelated, unit-variance inputs let the first trained conv use a high learning rate."""

    def __init__(self) -> None:
        super().__init__(3, 24, kernel_size=2, padding=0, bias=True)
        self.weight.requires_grad_(False)
        assert self.bias is not None  # bias=True
        self.bias.requires_grad_(False)


def _frozen_scale_bn(channels: int) -> nn.BatchNorm2d:
    # Scale fixed at 1: each channel enters GELU with unit variance and only its offset (the bias) is
    # learned; a learned scale buys little in a short run and is one more tensor for weight decay to shrink.
    # momentum=0.6 (the weight of each new batch): a fast run has only about a thousand steps while the
    # weights move quickly, so the running statistics used in evaluation must follow recent batches.
    bn = nn.BatchNorm2d(channels, momentum=0.6)
    bn.weight.requires_grad_(False)
    return bn


def _fast_block(c_in: int, c_out: int) -> nn.Sequential:
    # Pool straight after the first conv: the second conv then runs at a quarter of the pixels.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), _frozen_scale_bn(c_out), nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), _frozen_scale_bn(c_out), nn.GELU(),
    )


class FastNet(Classifier):
    """A fast GPU network in the spirit of the CIFAR-10 speed records (airbench94): a frozen whitening
    stem, three conv-pool-conv blocks (64, 256, 256 channels), global max-pooling and a scaled linear head.

    1,972,792 parameters in 21 tensors, of which 1,971,328 are trained (the stem's 312 and the 1,152
    BatchNorm scales are frozen); 118M multiply-adds per 32x32 image. Takes square images of at least
    9x9: the stem gives 8x8 and three 2x pools leave 1x1. Call ``init_whitening`` before training.
    """

    input_sides = (9, None)
    accepts = "square images of at least 9x9"

    # Max-pooled GELU features are large and positive (a few units each), so an unscaled head starts with
    # confident random logits; 1/9 keeps the initial softmax near uniform.
    logit_scale: float = 1 / 9

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = Whitening()
        self.blocks = nn.Sequential(_fast_block(24, 64), _fast_block(64, 256), _fast_block(256, 256))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(256, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1)) * self.logit_scale


def has_whitening(model: nn.Module) -> bool:
    """Whether ``model`` has a stem for :func:`init_whitening` to set."""
    return any(isinstance(m, Whitening) for m in model.modules())


@torch.no_grad()
def init_whitening(model: nn.Module, images: torch.Tensor, eps: float = 5e-4) -> bool:
    """Set ``model``'s ``Whitening`` stem from ``images`` (normalised float, N x 3 x H x W, e.g. 5,000
    training images); return False, changing nothing, when the model has no such stem.

    The 12 x 12 covariance of all 2x2 patches is accumulated in float64 on the CPU and eigendecomposed;
    each eigenvector divided by sqrt(eigenvalue + eps) is a filter whose output has unit variance
    (eps bounds the gain of near-constant directions). The 12 filters and their negatives fill the 24
    channels, so the GELU after the next conv sees both signs of each direction, and the bias maps the
    mean patch to 0. Deterministic: the same images give bitwise the same weights on every rank (fixed
    chunk order; each eigenvector's sign is fixed by its largest entry, not left to LAPACK).
    """
    if not has_whitening(model):
        return False
    stem = next(m for m in model.modules() if isinstance(m, Whitening))
    total = torch.zeros(12, dtype=torch.float64)
    outer = torch.zeros(12, 12, dtype=torch.float64)
    count = 0
    for chunk in images.detach().to("cpu", torch.float64).split(256):  # bounds memory at ~256 images of patches
        patches = F.unfold(chunk, kernel_size=2).transpose(1, 2).reshape(-1, 12)  # (c, dy, dx) order, as conv weights
        total += patches.sum(0)
        outer += patches.T @ patches
        count += patches.shape[0]
    mean = total / count
    eigenvalues, eigenvectors = torch.linalg.eigh(outer / count - torch.outer(mean, mean))
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)  # largest variance first
    signs = eigenvectors.gather(0, eigenvectors.abs().argmax(0, keepdim=True)).sign()
    filters = (eigenvectors * signs).T / (eigenvalues.clamp(min=0) + eps).sqrt()[:, None]
    weight = torch.cat([filters, -filters])
    stem.weight.copy_(weight.reshape(24, 3, 2, 2))
    assert stem.bias is not None  # Whitening has a bias
    stem.bias.copy_(-weight @ mean)
    return True


MODELS: dict[str, type[Classifier]] = {"lenet": LeNet, "convnet_bn": ConvNetBN, "resnet18": ResNet18,
                                       "fastnet": FastNet}

def accepted_inputs(name: str) -> str:
    """The inputs model ``name`` takes, in words (each class says so beside its layers, in ``accepts``;
    tests/test_models.py checks ``input_sides`` against the network itself)."""
    return f"3-channel {MODELS[name].accepts}"


def input_size_error(name: str, channels: int, height: int, width: int, where: str = "") -> UsageError:
    """``where``: optionally, which layer breaks (e.g. 'it breaks at fc1 (...); ')."""
    return UsageError(f"model.name={name} cannot take {channels}x{height}x{width} inputs: {where}it accepts "
                      f"{accepted_inputs(name)}; resize the data (data.image_size for fake data) or pick another "
                      f"model.name")


def check_input_size(name: str, channels: int, height: int, width: int) -> None:
    """Fail with the sizes ``name`` accepts when it cannot take ``channels`` x ``height`` x ``width``."""
    low, high = MODELS[name].input_sides
    fits = low <= min(height, width) and (high is None or max(height, width) <= high)
    if channels != 3 or not fits:
        raise input_size_error(name, channels, height, width)


def build_model(config: ModelConfig, num_classes: int) -> nn.Module:
    """``model.name`` with its BatchNorm layers as configured: ghost batch norm (``model.bn_group_size``),
    torch's SyncBatchNorm (``model.sync_bn``) or BatchNorm2d. All three have the same state-dict keys, so
    weights load into a model built with any of them."""
    model: nn.Module = MODELS[config.name](num_classes=num_classes)
    if config.bn_group_size is not None:
        model = convert_ghost_batchnorm(model, config.bn_group_size)
    if config.sync_bn:
        # On one process, or outside training, SyncBatchNorm is BatchNorm2d; engine.build_accelerator refuses
        # several processes without CUDA, where its training forward would fail.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
