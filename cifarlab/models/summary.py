"""A model's layers, one row per layer call: input and output shapes, parameters, and for Conv2d and pooling layers
the tutorial's output-size formula (W - F + 2P)/S + 1 (input width W, kernel F, padding P, stride S); and where an
input of the wrong size breaks the model. ``python -m cifarlab.summary`` prints it as a table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

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
