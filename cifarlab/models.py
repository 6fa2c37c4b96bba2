"""Networks for 3-channel CIFAR-scale images, and the input sizes each accepts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab.config import ModelConfig
from cifarlab.errors import UsageError


class LeNet(nn.Module):
    """The PyTorch tutorial's Net: two 5x5 convs with max-pooling, three linear layers.

    62,006 parameters in 10 tensors. The flatten assumes a 16x5x5 feature map, which only
    32x32 (or 33x33) inputs produce: (32 - 4) / 2 = 14, (14 - 4) / 2 = 5.
    """

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


class ConvNetBN(nn.Module):
    """A small VGG-style ConvNet with BatchNorm2d (about 0.29M parameters), global-pooled so
    any input of at least 4x4 works."""

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


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: a 3x3 stride-1 stem and no max-pool (ImageNet's 7x7 stem
    and pool would shrink CIFAR images to 8x8 before the first block)."""

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


MODELS: dict[str, type[nn.Module]] = {"lenet": LeNet, "convnet_bn": ConvNetBN, "resnet18": ResNet18}

# Input side lengths (pixels) each model accepts; global-pooled models take any size from a minimum.
_ACCEPTED: dict[str, tuple[int, int | None, str]] = {
    "lenet": (32, 33, "32x32 (or 33x33) images, since fc1 expects a 16x5x5 feature map"),
    "convnet_bn": (4, None, "square images of at least 4x4"),
    "resnet18": (8, None, "square images of at least 8x8"),
}


def accepted_inputs(name: str) -> str:
    """The inputs model ``name`` takes, in words."""
    return f"3-channel {_ACCEPTED[name][2]}"


def input_size_error(name: str, channels: int, height: int, width: int, where: str = "") -> UsageError:
    """``where``: optionally, which layer breaks (e.g. 'it breaks at fc1 (...); ')."""
    return UsageError(f"model.name={name} cannot take {channels}x{height}x{width} inputs: {where}it accepts "
                      f"{accepted_inputs(name)}; resize the data (data.image_size for fake data) or pick another "
                      f"model.name")


def check_input_size(name: str, channels: int, height: int, width: int) -> None:
    """Fail with the sizes ``name`` accepts when it cannot take ``channels`` x ``height`` x ``width``."""
    low, high, _ = _ACCEPTED[name]
    fits = low <= min(height, width) and (high is None or max(height, width) <= high)
    if channels != 3 or not fits:
        raise input_size_error(name, channels, height, width)


def build_model(config: ModelConfig, num_classes: int) -> nn.Module:
    return MODELS[config.name](num_classes=num_classes)
