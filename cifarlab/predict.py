"""Classify image files with a trained model: the top-k classes and their softmax probabilities.

    python -m cifarlab.predict --checkpoint runs/exp1 cat.png dog.jpg                 # a run directory
    python -m cifarlab.predict --checkpoint runs/exp1/checkpoints/best --top-k 3 *.png # a checkpoint folder
    python -m cifarlab.predict --checkpoint model.safetensors --config configs/tutorial.yaml photo.jpg

Weights are read from safetensors only (no pickle). Any image PIL reads works: it is converted to
RGB and resized to the size the model was trained on (32x32; data.image_size for data.name=fake),
without keeping the aspect ratio, then normalised with the run's data.mean and data.std (null: the
dataset's own, as in training); the run's train.tta (test-time augmentation) applies, as in its evaluation.
One line per image on stdout, ``PATH: cat 63.1 %, dog 20.2 %, ...``; notes on conversions on stderr.
A path that is not a readable image (missing, a folder, not an image, truncated) gets one
``cifarlab: error:`` line on stderr; every other image is still predicted, and the exit code is then 2.
Other user errors (the checkpoint, --top-k) print one line and exit with code 2 before any prediction.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from PIL import Image, ImageOps
from torch import nn

from cifarlab.config import Config, DataConfig
from cifarlab.config_errors import refuse_config_flags
from cifarlab.data.images import build_transform
from cifarlab.errors import UsageError
from cifarlab.report import console
from cifarlab.run import engine, loading


@dataclass
class Picture:
    path: str
    """As the user gave it: the output names images the way they were passed."""
    image: Image.Image
    """Decoded, EXIF-rotated, in its original mode and size."""


TOP_K = 3
"""Classes shown per image unless --top-k says otherwise (fewer for a model of fewer classes)."""


def read_images(paths: Sequence[str]) -> tuple[list[Picture], list[str]]:
    """Decode every image before anything slow (the model) is loaded: (the pictures, in the order given; one
    message per path that is not a readable image)."""
    pictures, problems = [], []
    for name in paths:
        try:
            pictures.append(Picture(path=name, image=read_image(name)))
        except UsageError as error:
            problems.append(str(error))
    return pictures, problems


def read_image(name: str) -> Image.Image:
    """One decoded, upright image, or a :class:`UsageError` saying why ``name`` is not one."""
    path = Path(name)
    if not path.exists():
        raise UsageError(f"image {name}: no such file; check the path (images are the last arguments)")
    if path.is_dir():
        raise UsageError(f"image {name}: is a directory; pass image files, e.g. {name.rstrip('/')}/*.png")
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: a truncated file fails here, not halfway through the output
            # Phone photos store their rotation in EXIF; the model should see them upright.
            return ImageOps.exif_transpose(opened)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"image {name}: not an image PIL can read ({reason}); pass PNG, JPEG or other "
                         f"image files") from None


def input_size(data: DataConfig) -> int:
    """Side length (pixels) the model was trained on: CIFAR-10 and the JPEG copy are 32x32;
    data.image_size only sizes synthetic FakeData."""
    return data.image_size if data.name == "fake" else 32


def prepare(picture: Picture, data: DataConfig) -> tuple[torch.Tensor, list[str]]:
    """The 3xSxS tensor the model expects, and notes on what was changed to get it."""
    image, notes = picture.image, []
    if image.mode != "RGB":
        notes.append(f"converted from mode {image.mode} to RGB")
        image = image.convert("RGB")
    size = input_size(data)
    if image.size != (size, size):
        width, height = image.size
        notes.append(f"resized from {width}x{height} to {size}x{size}")
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    tensor = build_transform(data, train=False)(image)  # what evaluation does: ToTensor, the run's Normalize
    return tensor, notes


@torch.no_grad()
def top_k(model: nn.Module, batch: torch.Tensor, classes: Sequence[str], k: int,
          tta: str = "none") -> list[list[tuple[str, float]]]:
    """Per image, the ``k`` most probable classes with their probabilities in percent, most probable first;
    ``tta`` as the run's ``train.tta``, so a prediction agrees with the run's evaluation."""
    model.eval()
    probabilities = torch.softmax(engine.tta_logits(model, batch, tta).float(), dim=1) * 100
    values, indices = probabilities.topk(k, dim=1)
    return [[(classes[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(values, indices)]


def format_line(path: str, ranked: Sequence[tuple[str, float]]) -> str:
    return f"{path}: " + ", ".join(f"{name} {percent:.1f} %" for name, percent in ranked)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cifarlab.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="a run directory, its model.safetensors, or a folder under <run>/checkpoints/")
    parser.add_argument("--config", help="the YAML config the model was trained with (default: the run's config.yaml)")
    parser.add_argument("--top-k", type=int, default=None,
                        help=f"classes to show per image (default {TOP_K}, or every class of a model with fewer)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...), any size or mode")
    refuse_config_flags(parser, sys.argv[1:] if argv is None else argv, Config)
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.top_k is not None and args.top_k < 1:  # the class count, the upper bound, is known once loaded
            raise UsageError(f"--top-k {args.top_k}: pass --top-k 1 or more (at most the number of classes)")
        pictures, problems = read_images(args.images)
        for problem in problems:  # each bad image in one line, as it is found; the others are still predicted
            console.error(problem)
        if not pictures:
            return UsageError.exit_code
        trained = loading.load_trained(args.checkpoint, args.config)
        shown = args.top_k if args.top_k is not None else min(TOP_K, len(trained.classes))  # a 2-class model: both
        if shown > len(trained.classes):
            raise UsageError(f"--top-k {args.top_k}: the model has {len(trained.classes)} classes; pass "
                             f"--top-k between 1 and {len(trained.classes)}")
        prepared = [prepare(picture, trained.config.data) for picture in pictures]
    except UsageError as error:
        console.error(str(error))
        return error.exit_code
    for picture, (_, notes) in zip(pictures, prepared):
        if notes:
            console.note(f"{picture.path}: {'; '.join(notes)}")  # flushed: before the predictions on a terminal
    ranked = top_k(trained.model, torch.stack([tensor for tensor, _ in prepared]), trained.classes, shown,
                   trained.config.train.tta)
    for picture, row in zip(pictures, ranked):
        sys.stdout.write(format_line(picture.path, row) + "\n")
    return UsageError.exit_code if problems else 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
