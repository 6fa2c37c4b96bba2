"""Per-layer summary of a configured model: output shapes, parameter counts, Conv2d/pool size formulas.

    python -m cifarlab.summary --config configs/tutorial.yaml                 # LeNet on 32x32 inputs
    python -m cifarlab.summary --config configs/resnet18.yaml
    python -m cifarlab.summary --config configs/smoke.yaml data.image_size=64  # lenet cannot: says where it breaks

The input is one 1x3xHxW image with H = W = data.image_size. The size column is the tutorial's
formula (W - F + 2P)/S + 1 for input width W, kernel F, padding P and stride S.
User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from cifarlab import models
from cifarlab.config import CIFAR10_CLASSES, Config, load_config
from cifarlab.errors import UsageError
from cifarlab.report import console

# Layers whose output size the tutorial's formula gives (they all have kernel_size/stride/padding).
_SIZED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass
class LayerRow:
    name: str
    """Dotted module name, as in the state dict (``conv1``, ``layers.0.shortcut.0``)."""
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    """Parameters owned by this layer; 0 on its second and later calls (they are counted once)."""
    call: int = 1
    """1 for a layer's first call in the forward pass, 2 for a reused one's second (LeNet's pool)."""
    formula: Optional[str] = None
    """Output-size arithmetic for Conv2d/pooling layers, e.g. ``(32 - 5 + 2*0)/1 + 1 = 28``."""


class BrokenAt(Exception):
    """The dummy forward failed: in ``layer`` (None: between layers, after the last row) for ``reason``."""

    def __init__(self, layer: Optional[str], reason: str, rows: list[LayerRow]) -> None:
        where = f"at {layer}" if layer else f"after {rows[-1].name if rows else 'the input'}"
        super().__init__(f"it breaks {where} ({reason})")
        self.layer, self.reason, self.rows = layer, reason, rows


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _size(module: nn.Module, size: int, dim: int) -> tuple[int, str]:
    """Output length along ``dim`` (0 = height, 1 = width) and the formula that gives it."""
    kernel, stride, padding = (_pair(getattr(module, a))[dim] for a in ("kernel_size", "stride", "padding"))
    dilation = _pair(getattr(module, "dilation", 1))[dim]
    span = dilation * (kernel - 1) + 1  # the kernel's reach; equals F when dilation is 1
    ceil = bool(getattr(module, "ceil_mode", False))
    numerator = size - span + 2 * padding
    out = (-(-numerator // stride) if ceil else numerator // stride) + 1
    text = f"({size} - {span} + 2*{padding})/{stride}"
    if numerator % stride:  # PyTorch rounds down (up with ceil_mode); say so where it matters
        text = f"{'ceil' if ceil else 'floor'}({text})"
    return out, f"{text} + 1 = {out}"


def size_formula(module: nn.Module, input_shape: Sequence[int]) -> tuple[tuple[int, int], str]:
    """(output height, width) and the formula text; one formula when both sides read the same."""
    (h, fh), (w, fw) = _size(module, input_shape[-2], 0), _size(module, input_shape[-1], 1)
    return (h, w), fh if fh == fw else f"H: {fh}; W: {fw}"


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else ()


def _reason(module: nn.Module, input_shape: tuple[int, ...], error: Exception) -> str:
    """Why ``module`` rejected ``input_shape``, in the user's terms rather than a matmul's."""
    kind = type(module).__name__
    if isinstance(module, nn.Linear) and input_shape:
        return f"{kind} expects {module.in_features} features, got {input_shape[-1]}"
    if isinstance(module, nn.Conv2d) and len(input_shape) == 4 and input_shape[1] != module.in_channels:
        return f"{kind} expects {module.in_channels} channels, got {input_shape[1]}"
    if isinstance(module, _SIZED) and len(input_shape) == 4:
        (h, w), formula = size_formula(module, input_shape)
        if h < 1 or w < 1:
            return f"{kind} on a {input_shape[-2]}x{input_shape[-1]} map: {formula}"
    return f"{kind}: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # An empty Sequential (ResNet's identity shortcut) has no children but is no layer.
    return [(name, m) for name, m in model.named_modules()
            if name and not any(True for _ in m.children()) and not isinstance(m, (nn.Sequential, nn.ModuleList))]


def layer_summary(model: nn.Module, input_size: Sequence[int]) -> list[LayerRow]:
    """One row per leaf-module call, in forward order, from a forward pass of zeros of ``input_size``.

    Raises :class:`BrokenAt` when the model cannot take that input. The model is put in eval
    mode: BatchNorm in training mode cannot normalise a batch of one 1x1 map.
    """
    rows: list[LayerRow] = []
    calls: dict[str, int] = {}
    inside: list[tuple[str, nn.Module, tuple[int, ...]]] = []  # the leaf running now (leaves do not nest)

    def before(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        inside.append((name, module, _shape(args[0]) if args else ()))

    def after(name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        _, _, input_shape = inside.pop()
        calls[name] = calls.get(name, 0) + 1
        first = calls[name] == 1
        formula = size_formula(module, input_shape)[1] if isinstance(module, _SIZED) and len(input_shape) == 4 else None
        rows.append(LayerRow(
            name=name, type=type(module).__name__, input_shape=input_shape, output_shape=_shape(output),
            params=sum(p.numel() for p in module.parameters(recurse=False)) if first else 0,
            call=calls[name], formula=formula,
        ))

    handles = []
    for name, module in _leaves(model):
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: before(n, m, a)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: after(n, m, a, o)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(*input_size))
    except (RuntimeError, ValueError) as error:
        if inside:
            name, module, input_shape = inside[-1]
            raise BrokenAt(name, _reason(module, input_shape, error), rows) from None
        raise BrokenAt(None, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
                       rows) from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return rows


@dataclass
class Totals:
    parameters: int
    trainable: int
    tensors: int
    """Parameter tensors (LeNet: 10, a weight and a bias per layer)."""


def totals(model: nn.Module) -> Totals:
    params = list(model.parameters())
    return Totals(parameters=sum(p.numel() for p in params),
                  trainable=sum(p.numel() for p in params if p.requires_grad), tensors=len(params))


def input_error(name: str, input_size: Sequence[int], broken: BrokenAt) -> UsageError:
    """One line: where the model breaks, then the sizes it accepts."""
    channels, height, width = input_size[-3:]
    return models.input_size_error(name, channels, height, width, where=f"{broken}; ")


def summarize(config: Config) -> tuple[list[LayerRow], Totals, tuple[int, ...]]:
    """Rows and totals for the configured model, or a :class:`UsageError` naming where it breaks."""
    # The classes the config knows (cifar100: 100, fake: data.num_classes); an image folder's come from its
    # folders, which a summary does not read: 10 unless data.num_classes says.
    model = models.build_model(config.model, config.data.class_count() or len(CIFAR10_CLASSES))
    input_size = (1, 3, config.data.image_size, config.data.image_size)
    try:
        rows = layer_summary(model, input_size)
    except BrokenAt as broken:
        raise input_error(config.model.name, input_size, broken) from None
    # The forward ran, but the trainer refuses sizes outside the accepted range (e.g. resnet18 below 8x8).
    models.check_input_size(config.model.name, *input_size[1:])
    return rows, totals(model), input_size


def render(out: Console, model_name: str, input_size: Sequence[int], rows: list[LayerRow], total: Totals) -> None:
    table = Table(title=f"{model_name} on a {'x'.join(map(str, input_size))} input")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    table.add_column("output size: (W - F + 2P)/S + 1")
    for row in rows:
        name = row.name if row.call == 1 else f"{row.name} (call {row.call})"
        params = f"{row.params:,}" if row.call == 1 else "shared"
        table.add_row(name, row.type, str(row.output_shape), params, row.formula or "")
    out.print(table)
    out.print(f"parameters: {total.parameters:,}\ntrainable: {total.trainable:,}\ntensors: {total.tensors}")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cifarlab.summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset merged over the defaults, e.g. configs/tutorial.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.name=resnet18")
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        rows, total, input_size = summarize(config)
    except UsageError as error:
        console.error(str(error))
        return error.exit_code
    if config.data.name != "fake" and config.data.image_size != 32:
        console.note(f"data.name={config.data.name} trains on 32x32 images; data.image_size={config.data.image_size} "
                     f"sizes only this summary's input")
    # Piped output (tests, `| less`) gets a wide console so the table is never wrapped at 80 columns.
    out = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 200)
    render(out, config.model.name, input_size, rows, total)
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
