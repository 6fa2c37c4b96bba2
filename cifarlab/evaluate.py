"""Evaluate a trained model: accuracy (and top-5 beyond 5 classes), per-class accuracy, test loss and the
confusion matrix; beyond 20 classes, per CIFAR-100 superclass (or the best and worst classes) and the
most-confused pairs.

    python -m cifarlab.evaluate --checkpoint runs/exp1                          # the run's final weights
    python -m cifarlab.evaluate --checkpoint runs/exp1/checkpoints/best --png confusion.png
    accelerate launch --multi_gpu --num_processes 2 -m cifarlab.evaluate --checkpoint runs/exp1 data.root=/data/c10

The run's config.yaml (next to the checkpoint) says which data and model; --config replaces it and
key=value overrides adjust it (e.g. data.root). Weights are read with safetensors only. Every test
image counts exactly once at any process count. User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from cifarlab import data, files, models
from cifarlab.config import Config
from cifarlab.config_errors import refuse_config_flags
from cifarlab.errors import UsageError
from cifarlab.report import console, figures, plots
from cifarlab.report.metrics import EvalResult
from cifarlab.run import engine, loading


def evaluate_checkpoint(checkpoint: str, config_file: Optional[str], overrides: Sequence[str],
                        png: Optional[Path]) -> EvalResult:
    trained = loading.load_trained(checkpoint, config_file, overrides)
    config = trained.config
    accelerator = engine.build_accelerator(config)
    out = console.Console(accelerator.is_main_process)
    datasets = data.build_data(config.data, config.train.seed, engine.data_first(accelerator), out.warn,
                               device=accelerator.device, progress=out)
    if datasets.classes != trained.classes:
        raise UsageError(f"the data has classes {list(datasets.classes)} but the model was trained on "
                         f"{list(trained.classes)}; point data.name / data.root at the data it was trained on")
    models.check_input_size(config.model.name, *datasets.input_shape())
    datasets.prepare(accelerator, batch_size=None, eval_batch_size=config.train.eval_batch_size)
    model = accelerator.prepare(trained.model)
    result = engine.evaluate(model, datasets.test_batches(), accelerator, datasets.classes, config.train.tta)

    out.log(f"{files.typed(trained.weights)} on {config.data.name} ({config.data.root}), "
            f"{accelerator.num_processes} process(es)")
    out.eval_table(console.accuracy_summary(result), result)
    out.confusion_table(result)
    if png is not None and accelerator.is_main_process:
        figures.save(plots.confusion_figure(result.confusion, datasets.classes), png)
        out.log(f"confusion matrix written to {files.typed(png)}")
    engine.leave(accelerator)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="cifarlab.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="run directory, its model.safetensors, or a folder under <run>/checkpoints/")
    parser.add_argument("--config", help="config to use instead of the run's config.yaml")
    parser.add_argument("--png", type=Path, metavar="FILE",
                        help="also draw the confusion matrix into this picture; the name's ending picks the format: "
                             f"{figures.endings()}")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.root=/data")
    refuse_config_flags(parser, sys.argv[1:] if argv is None else argv, Config)
    args = parser.parse_intermixed_args(argv)
    try:
        if args.png is not None:
            figures.check("--png", args.png)
        evaluate_checkpoint(args.checkpoint, args.config, args.overrides, args.png)
    except UsageError as error:
        console.error(str(error))
        return error.exit_code
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
