"""Charts as files and images: every picture cifarlab draws is a matplotlib figure (Agg, no display), written by
:func:`save` in the format its file name's ending picks, or turned into a PIL image by :func:`image` (W&B media).

matplotlib is imported by the functions that draw, never at import: ``--help``, refusals and every command that
draws nothing start without it. Figures are made with :func:`figure` (``matplotlib.figure.Figure``, no pyplot and
no global state); only Optuna's plots use pyplot, through :func:`pyplot`."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarlab import files
from cifarlab.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

FORMATS = ("png", "svg", "pdf")
"""What a picture's file may be, picked by its name's ending: PNG for slides and W&B, SVG and PDF (vector) for
papers and web pages."""

DPI = 100
"""Pixels per inch of a PNG by default: a figure of W x H inches is 100 W x 100 H pixels (150 for a slide's)."""

GREEN, RED, GREY, BLUE, LIGHT = "#148c28", "#dc1e1e", "#787878", "#2855c8", "#96aadc"
"""Better, worse, neither (and each run's dot, with LIGHT inside), an interval."""
SERIES = ("#2855c8", "#e08c1a", "#7a4fb0", "#2aa5a0", "#b0457a", "#6b6b00")
"""One colour per group where several are drawn side by side (none of them green or red: those mean better, worse)."""


def endings() -> str:
    """``.png, .svg or .pdf``."""
    named = [f".{ending}" for ending in FORMATS]
    return f"{', '.join(named[:-1])} or {named[-1]}"


def check(option: str, path: Path) -> None:
    """Before any work: ``path`` is a file name a picture can be written to, in one of :data:`FORMATS`; one line
    naming ``option`` where it is not."""
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name ending in {endings()}")
    if path.suffix.lower().lstrip(".") not in FORMATS:
        raise UsageError(f"{option} {path}: the name's ending picks the picture's format; give a file name ending "
                         f"in {endings()}")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: folder {path.parent} does not exist")
    files.refuse_link(path)


def figure(width: float, height: float, dpi: int = DPI) -> Figure:
    """A blank figure of ``width`` x ``height`` inches, ``dpi`` pixels an inch in a PNG, whose parts are laid out to
    fit (constrained layout)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def panel(ax: Any, title: str) -> None:
    """cifarlab's look for a panel: its title on the left in bold, no box at the top and right, light vertical grid
    lines behind the data (set on the axes, not in matplotlib's global settings)."""
    ax.set_title(title, loc="left", fontweight="bold", fontsize="medium")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#e4e4e4")
    ax.set_axisbelow(True)


@contextlib.contextmanager
def pyplot() -> Iterator[Any]:
    """matplotlib.pyplot on the Agg backend, for Optuna's plots (which draw through it and set a style of their own):
    matplotlib's settings are restored, and every figure opened in the block closed, when it ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    with matplotlib.rc_context():
        try:
            yield matplotlib.pyplot
        finally:
            matplotlib.pyplot.close("all")


def save(chart: Figure, path: Path, tight: bool = False, option: str = "--png") -> None:
    """Write ``chart`` to ``path`` in the format its ending names, whole or not at all (a temporary file renamed
    into place; a link at ``path`` is refused, cifarlab.files). ``tight``: cropped to what is drawn (a legend
    outside the axes). A folder that refuses it (permissions, a full disk) is one line naming ``option``."""
    try:
        with files.replacing(path) as temporary:
            chart.savefig(temporary, format=path.suffix.lower().lstrip("."), dpi="figure",
                          bbox_inches="tight" if tight else None)
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot write it ({error.strerror or error})") from None


def image(chart: Figure) -> Image.Image:
    """``chart`` as a PIL image (rendered to a PNG in memory)."""
    from PIL import Image

    buffer = io.BytesIO()
    chart.savefig(buffer, format="png", dpi="figure")
    buffer.seek(0)
    with Image.open(buffer) as picture:
        return picture.convert("RGB")
