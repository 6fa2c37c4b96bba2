"""Per-layer summary of a configured model: output shapes, parameter counts, Conv2d/pool size formulas.

    python -m cifarlab.summary --config configs/tutorial.yaml                 # LeNet on 32x32 inputs
    python -m cifarlab.summary --config configs/resnet18.yaml
    python -m cifarlab.summary --config configs/smoke.yaml data.image_size=64  # lenet cannot: says where it breaks

The input is one 1x3xHxW image with H = W = data.image_size. The size column is the tutorial's
formula (W - F + 2P)/S + 1 for input width W, kernel F, padding P and stride S. The rows come from
cifarlab/models/summary.py; this command builds the configured model and prints them.
User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from cifarlab import models
from cifarlab.config import CIFAR10_CLASSES, Config, load_config
from cifarlab.config_errors import refuse_config_flags
from cifarlab.errors import UsageError
from cifarlab.models.summary import BrokenAt, LayerRow, Totals, layer_summary, totals
from cifarlab.report import console


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


FORMULA = "output size: (W - F + 2P)/S + 1"


def render(out: Console, model_name: str, input_size: Sequence[int], rows: list[LayerRow], total: Totals) -> None:
    """One table; where it would not fit the console (80 columns: resnet18's is 96 wide), the formulas move to a
    second table of the layers that have one, so no cell is wrapped or cut."""
    title = f"{model_name} on a {'x'.join(map(str, input_size))} input"
    table = _layer_table(title, rows, with_formula=True)
    if Measurement.get(out, out.options.update_width(10_000), table).maximum <= out.width:
        out.print(table)
    else:
        out.print(_layer_table(title, rows, with_formula=False))
        formulas = Table(title=f"{FORMULA} of the layers above that have one")
        formulas.add_column("layer", no_wrap=True)
        formulas.add_column("output size", no_wrap=True)
        for row in rows:
            if row.formula:
                formulas.add_row(_name(row), row.formula)
        out.print(formulas)
    out.print(f"parameters: {total.parameters:,}\ntrainable: {total.trainable:,}\ntensors: {total.tensors}")


def _name(row: LayerRow) -> str:
    return row.name if row.call == 1 else f"{row.name} (call {row.call})"


def _layer_table(title: str, rows: list[LayerRow], with_formula: bool) -> Table:
    table = Table(title=title)
    for column in ("layer", "type", "output shape"):
        table.add_column(column, no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    if with_formula:
        table.add_column(FORMULA, no_wrap=True)
    for row in rows:
        params = f"{row.params:,}" if row.call == 1 else "shared"
        formula = [row.formula or ""] if with_formula else []
        table.add_row(_name(row), row.type, str(row.output_shape), params, *formula)
    return table


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cifarlab.summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML preset merged over the defaults, e.g. configs/tutorial.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.name=resnet18")
    refuse_config_flags(parser, sys.argv[1:] if argv is None else argv, Config)
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
