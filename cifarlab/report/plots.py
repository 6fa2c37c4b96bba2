"""Pictures for people: a confusion matrix and labelled image grids, as PIL images (PNG files, W&B media).

Drawn with PIL alone (no plotting library): the tutorial's ``imshow(make_grid(...))`` done properly:
images unnormalised back to [0, 1], each labelled with its true and predicted class, red where wrong.
Beyond 20 classes a confusion matrix cell would be a few pixels with no room for names: CIFAR-100 gets its
20 superclasses' matrix instead, and any many-class set the chart of its most-confused pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from PIL import Image, ImageDraw, ImageFont

from cifarlab.data.classes import FULL_TABLE, grouped_confusion, most_confused, superclasses

_RED, _GREEN, _BLACK, _WHITE = (220, 30, 30), (20, 140, 40), (0, 0, 0), (255, 255, 255)
_GREY, _BAR = (200, 200, 200), (230, 120, 100)
_LINE = 12  # pixels per line of text in the default font
_PAIRS = 20  # most-confused pairs charted


def unnormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo Normalize(mean, std): back to [0, 1] for display."""
    mean_t = torch.tensor(list(mean), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def fit(text: str, font: Any, width: float) -> str:
    """``text`` cut to ``width`` pixels, ending in '.' where cut (CIFAR-100 names run to 29 letters)."""
    if font.getlength(text) <= width:
        return text
    while len(text) > 1 and font.getlength(text + ".") > width:
        text = text[:-1]
    return text + "."


def labelled_grid(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], mean: Sequence[float],
                  std: Sequence[float], preds: Optional[torch.Tensor] = None, scale: int = 3,
                  columns: int = 8) -> Image.Image:
    """A grid of (normalised) ``images`` with captions cut to the image's width: the class; or, when
    ``preds`` is given, the prediction, and below it '(true class)' in red where the prediction is wrong."""
    pictures = unnormalize(images.detach().float().cpu(), mean, std)
    pictures = torch.nn.functional.interpolate(pictures, scale_factor=scale, mode="nearest")
    lines = 1 if preds is None else 2
    tiles: list[Image.Image] = []
    font = ImageFont.load_default()
    for i, picture in enumerate(pictures):
        pixels = (picture.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        width = pixels.shape[1]
        tile = Image.new("RGB", (width, pixels.shape[0] + lines * _LINE), _WHITE)
        tile.paste(Image.fromarray(pixels), (0, lines * _LINE))
        draw = ImageDraw.Draw(tile)
        true = classes[int(labels[i])]
        if preds is None:
            draw.text((1, 0), fit(true, font, width - 2), fill=_BLACK, font=font)
        else:
            guess = classes[int(preds[i])]
            draw.text((1, 0), fit(guess, font, width - 2), fill=_GREEN if guess == true else _RED, font=font)
            if guess != true:
                draw.text((1, _LINE), "(" + fit(true, font, width - 2 - font.getlength("()")) + ")", fill=_RED,
                          font=font)
        tiles.append(tile)
    return _grid(tiles, columns)


def _grid(tiles: Sequence[Image.Image], columns: int, padding: int = 2) -> Image.Image:
    """Equal-sized tiles in rows of ``columns``, ``padding`` white pixels around and between them."""
    width, height = tiles[0].size
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (columns * (width + padding) + padding, rows * (height + padding) + padding), _WHITE)
    for i, tile in enumerate(tiles):
        grid.paste(tile, (padding + (i % columns) * (width + padding), padding + (i // columns) * (height + padding)))
    return grid


def confusion_image(confusion: Sequence[Sequence[int]], classes: Sequence[str], cell: int = 44) -> Image.Image:
    """The confusion matrix as a heat map (see :func:`heat_map`). Beyond 20 classes: CIFAR-100's superclass
    matrix, numbered, above a chart of the most-confused class pairs; other sets the chart alone."""
    if len(classes) <= FULL_TABLE:
        return heat_map(confusion, list(classes), [name[:7] for name in classes],
                        "rows: true class, columns: predicted class", cell)
    parts = []
    groups = superclasses(classes)
    if groups is not None:
        parts.append(heat_map(grouped_confusion(confusion, groups),
                              [f"{k + 1:2d} {name}" for k, (name, _) in enumerate(groups)],
                              [str(k + 1) for k in range(len(groups))],
                              "superclasses (images summed over their 5 classes): rows true, columns predicted", 36))
    parts.append(pairs_chart(confusion, classes))
    return _stack(parts)


def heat_map(confusion: Sequence[Sequence[int]], row_names: Sequence[str], column_names: Sequence[str],
             title: str, cell: int) -> Image.Image:
    """Rows are true classes, columns predictions; each cell shows the count, shaded by the fraction of its
    row (blue on the diagonal, red off it)."""
    font = ImageFont.load_default()
    left = 12 + int(max(font.getlength(name) for name in row_names))  # room for the row names
    top = 30  # a title line and the column names
    size = len(row_names)
    width = max(left + cell * size + 4, 8 + int(font.getlength(title)))
    image = Image.new("RGB", (width, top + cell * size + 4), _WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), title, fill=_BLACK, font=font)
    for j, name in enumerate(column_names):
        draw.text((left + j * cell + 2, top - 13), name, fill=_BLACK, font=font)
    for i, row in enumerate(confusion):
        total = max(sum(row), 1)
        y = top + i * cell
        draw.text((4, y + cell // 2 - 5), row_names[i], fill=_BLACK, font=font)
        for j, count in enumerate(row):
            shade = int(255 * (1 - count / total))
            fill = (shade, shade, 255) if i == j else (255, shade, shade)
            x = left + j * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fill, outline=_GREY)
            draw.text((x + 4, y + cell // 2 - 5), str(count), fill=_WHITE if shade < 110 else _BLACK, font=font)
    return image


def pairs_chart(confusion: Sequence[Sequence[int]], classes: Sequence[str], count: int = _PAIRS) -> Image.Image:
    """The ``count`` most-confused (true, predicted) pairs as bars of their image counts, each labelled with
    its share of the true class's images."""
    font = ImageFont.load_default()
    pairs = most_confused(confusion, count)
    labels = [f"{classes[true]} -> {classes[predicted]}" for true, predicted, _, _ in pairs]
    title = f"most confused pairs of {len(classes)} classes: true -> predicted, images (share of the true class)"
    left = 8 + int(max((font.getlength(label) for label in labels), default=0))
    bars, row = 300, 16
    image = Image.new("RGB", (max(left + bars + 90, 8 + int(font.getlength(title))), 24 + row * max(len(pairs), 1)),
                      _WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), title, fill=_BLACK, font=font)
    if not pairs:
        draw.text((4, 24), "no test image was misclassified", fill=_BLACK, font=font)
    most = max((n for _, _, n, _ in pairs), default=1)
    for k, (label, (_, _, n, share)) in enumerate(zip(labels, pairs)):
        y = 24 + k * row
        draw.text((4, y + 1), label, fill=_BLACK, font=font)
        length = max(1, round(bars * n / most))
        draw.rectangle([left, y + 2, left + length, y + row - 3], fill=_BAR)
        draw.text((left + length + 4, y + 1), f"{n} ({100 * share:.0f} %)", fill=_BLACK, font=font)
    return image


def _stack(parts: Sequence[Image.Image], padding: int = 8) -> Image.Image:
    """Pictures one below the other, left-aligned, on white."""
    image = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts) + padding * (len(parts) - 1)),
                      _WHITE)
    y = 0
    for part in parts:
        image.paste(part, (0, y))
        y += part.height + padding
    return image
