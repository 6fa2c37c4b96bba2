"""Pictures for people: a confusion matrix (a matplotlib figure, cifarlab.report.figures; as a PIL image for W&B)
and labelled image grids (PIL images).

The grids are the tutorial's ``imshow(make_grid(...))`` done properly: images unnormalised back to [0, 1], each
labelled with its true and predicted class, red where wrong. Beyond 20 classes a confusion matrix cell would be a
few pixels with no room for names: CIFAR-100 gets its 20 superclasses' matrix instead, and any many-class set the
chart of its most-confused pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

import torch
from PIL import Image, ImageDraw, ImageFont

from cifarlab.data.classes import FULL_TABLE, grouped_confusion, most_confused, superclasses
from cifarlab.report import figures

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_RED, _GREEN, _BLACK, _WHITE = (220, 30, 30), (20, 140, 40), (0, 0, 0), (255, 255, 255)
_BAR = "#e67864"
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
    """:func:`confusion_figure` as a PIL image (W&B media)."""
    return figures.image(confusion_figure(confusion, classes, cell))


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str], cell: int = 44) -> Figure:
    """The confusion matrix as a heat map (see :func:`heat_map`), ``cell`` pixels a side. Beyond 20 classes:
    CIFAR-100's superclass matrix, numbered, above a chart of the most-confused class pairs; other sets the chart
    alone."""
    if len(classes) <= FULL_TABLE:
        chart = figures.figure(*_matrix_size(classes, classes, cell))
        heat_map(chart.subplots(), confusion, list(classes), list(classes), "confusion matrix")
        return chart
    groups = superclasses(classes)
    names = [f"{k + 1:2d} {name}" for k, (name, _) in enumerate(groups or [])]
    numbers = [str(k + 1) for k in range(len(names))]
    pairs = most_confused(confusion, _PAIRS)
    heights = [_matrix_size(names, numbers, 32)[1]] if groups else []
    heights.append(0.7 + 0.16 * max(len(pairs), 1))
    chart = figures.figure(9.6, sum(heights))
    axes = chart.subplots(len(heights), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    if groups is not None:
        heat_map(axes[0], grouped_confusion(confusion, groups), names, numbers,
                 "superclasses (images summed over their 5 classes)")
    pairs_chart(axes[-1], pairs, classes)
    return chart


def _matrix_size(rows: Sequence[str], columns: Sequence[str], cell: int) -> tuple[float, float]:
    """Width and height in inches of a heat map of ``cell``-pixel squares with its names, title and axis labels."""
    side = max(len(rows) * cell / figures.DPI, 2.5)
    return max(side + 0.075 * max(map(len, rows)) + 1.2, 5.0), side + 0.055 * max(map(len, columns)) + 1.3


def heat_map(ax: Any, confusion: Sequence[Sequence[int]], row_names: Sequence[str], column_names: Sequence[str],
             title: str) -> None:
    """Rows are true classes, columns predictions; each cell shows the count, shaded by the fraction of its
    row (blue on the diagonal, red off it)."""
    import matplotlib

    size = len(row_names)
    shares = [[count / max(sum(row), 1) for count in row] for row in confusion]
    blues, reds = matplotlib.colormaps["Blues"], matplotlib.colormaps["Reds"]
    ax.imshow([[(blues if i == j else reds)(share) for j, share in enumerate(row)] for i, row in enumerate(shares)],
              aspect="auto")  # cells about square: the figure is sized for them (fixed aspect upsets the layout)
    small = 9 if size <= 12 else 7
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=small,
                    color="white" if shares[i][j] > 0.55 else "black")
    turned = max(map(len, column_names)) > 3  # names, not numbers: at 45 degrees, each ending under its column
    ax.set_xticks(range(size), column_names, rotation=45 if turned else 0, ha="right" if turned else "center",
                  rotation_mode="anchor", fontsize=small + 1)
    ax.set_yticks(range(size), row_names, fontsize=small + 1)
    ax.tick_params(length=0)
    ax.grid(False)
    ax.spines[:].set_visible(False)
    ax.set_xlabel("predicted class\n(shade: share of the true class; blue right, red wrong)", fontsize=10)
    ax.set_ylabel("true class")
    ax.set_title(title, loc="left", fontweight="bold")


def pairs_chart(ax: Any, pairs: list[tuple[int, int, int, float]], classes: Sequence[str]) -> None:
    """The most-confused (true, predicted) ``pairs`` (classes.most_confused) as bars of their image counts, each
    labelled with its share of the true class's images."""
    figures.panel(ax, f"most confused pairs of {len(classes)} classes: true -> predicted, images (share of the true "
                      f"class)")
    if not pairs:
        ax.text(0.0, 0.5, "no test image was misclassified", transform=ax.transAxes, va="center")
        ax.set_axis_off()
        return
    labels = [f"{classes[true]} -> {classes[predicted]}" for true, predicted, _, _ in pairs]
    ax.set_yticks(range(len(pairs)), labels, fontsize=8)
    ax.set_ylim(len(pairs) - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)
    bars = ax.barh(range(len(pairs)), [n for _, _, n, _ in pairs], height=0.7, color=_BAR)
    ax.bar_label(bars, labels=[f"{n} ({100 * share:.0f} %)" for _, _, n, share in pairs], padding=3, fontsize=8)
    ax.set_xlim(0, 1.25 * max(n for _, _, n, _ in pairs))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("test images", fontsize=8)
