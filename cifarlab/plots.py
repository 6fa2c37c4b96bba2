"""Pictures for people: a confusion matrix and labelled image grids, as PIL images (PNG files, W&B media).

Drawn with PIL alone (no plotting library): the tutorial's ``imshow(make_grid(...))`` done properly:
images unnormalised back to [0, 1], each labelled with its true and predicted class, red where wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from PIL import Image, ImageDraw, ImageFont

_RED, _GREEN, _BLACK, _WHITE = (220, 30, 30), (20, 140, 40), (0, 0, 0), (255, 255, 255)


def unnormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo Normalize(mean, std): back to [0, 1] for display."""
    mean_t = torch.tensor(list(mean), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def labelled_grid(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], mean: Sequence[float],
                  std: Sequence[float], preds: Optional[torch.Tensor] = None, scale: int = 3,
                  columns: int = 8) -> Image.Image:
    """A grid of (normalised) ``images`` with captions: the class, or 'pred (true)' when ``preds`` is
    given, in red where the prediction is wrong."""
    pictures = unnormalize(images.detach().float().cpu(), mean, std)
    pictures = torch.nn.functional.interpolate(pictures, scale_factor=scale, mode="nearest")
    caption_height = 12
    tiles: list[Image.Image] = []
    font = ImageFont.load_default()
    for i, picture in enumerate(pictures):
        pixels = (picture.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        tile = Image.new("RGB", (pixels.shape[1], pixels.shape[0] + caption_height), _WHITE)
        tile.paste(Image.fromarray(pixels), (0, caption_height))
        true = classes[int(labels[i])]
        if preds is None:
            text, colour = true, _BLACK
        else:
            guess = classes[int(preds[i])]
            text, colour = (guess, _GREEN) if guess == true else (f"{guess} ({true})", _RED)
        ImageDraw.Draw(tile).text((1, 0), text, fill=colour, font=font)
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
    """The confusion matrix as a heat map: rows are true classes, columns predictions; each cell shows
    the count, shaded by the fraction of its row (blue on the diagonal, red off it)."""
    font = ImageFont.load_default()
    left = 8 + 7 * max(len(name) for name in classes)  # room for the row names
    top = 30  # a title line and the column names
    width, height = left + cell * len(classes) + 4, top + cell * len(classes) + 4
    image = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), "rows: true class, columns: predicted class", fill=_BLACK, font=font)
    for j, name in enumerate(classes):
        draw.text((left + j * cell + 2, top - 13), name[:7], fill=_BLACK, font=font)
    for i, row in enumerate(confusion):
        total = max(sum(row), 1)
        y = top + i * cell
        draw.text((4, y + cell // 2 - 5), classes[i], fill=_BLACK, font=font)
        for j, count in enumerate(row):
            shade = int(255 * (1 - count / total))
            fill = (shade, shade, 255) if i == j else (255, shade, shade)
            x = left + j * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fill, outline=(200, 200, 200))
            draw.text((x + 4, y + cell // 2 - 5), str(count), fill=_BLACK, font=font)
    return image
