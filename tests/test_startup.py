"""Start-up: the CLI's fast paths import no torch, and a training process imports torchvision and wandb only
when the run uses them, matplotlib only to draw W&B's pictures (bench/startup.py measures the times); with --quiet it
prints nothing, from its imports on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli_env

# Runs the trainer's CLI; at exit (also after --help) prints which heavy modules the process imported.
PROBE = ("import atexit, sys; from cifarlab.train import main; "
         "atexit.register(lambda: print('imported:', ','.join(m for m in ('torch', 'torchvision', 'wandb', "
         "'matplotlib') if m in sys.modules))); sys.exit(main(sys.argv[1:]))")


def probe(*args: str, cwd: Path) -> tuple[int, set[str], str, str]:
    """Exit code, the heavy modules imported, stderr, and stdout before the probe's own line."""
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=cli_env(), capture_output=True,
                            text=True, timeout=300)
    printed, _, line = result.stdout.rstrip("\n").rpartition("\n")
    assert line.startswith("imported:"), result.stdout + result.stderr
    return (result.returncode, set(filter(None, line.removeprefix("imported:").strip().split(","))), result.stderr,
            printed)


@pytest.mark.unit
@pytest.mark.parametrize("args, code", [(["--help"], 0), (["--print-config"], 0), (["optim.lrr=1"], 2),
                                        (["--config", "nope.yaml"], 2), (["train.mixed_precision=fp8"], 2)])
def test_help_print_config_and_config_errors_import_no_torch(args: list[str], code: int, tmp_path: Path) -> None:
    returncode, imported, *_ = probe(*args, cwd=tmp_path)
    assert (returncode, imported) == (code, set())


@pytest.mark.integration
def test_a_training_process_imports_torchvision_and_wandb_only_when_used(tmp_path: Path) -> None:
    noise = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 4)):
        for name in ("cat", "dog"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(count):
                image = noise.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(image).save(tmp_path / "data" / split / name / f"{i}.png")
    common = ["data.name=imagefolder", f"data.root={tmp_path / 'data'}", f"train.output_dir={tmp_path / 'runs'}",
              "train.batch_size=8", "train.epochs=1", "--quiet"]
    # The tensor path decodes an image folder without torchvision, and W&B is off: neither is imported. Each whole
    # training process, imports included, prints nothing under --quiet (test_console checks errors still show).
    plain = probe(*common, "train.run_name=plain", "logging.wandb.mode=disabled", cwd=tmp_path)
    assert (plain[0], plain[1], plain[3]) == (0, {"torch"}, "")
    offline = probe(*common, "train.run_name=offline", "logging.wandb.mode=offline", cwd=tmp_path)
    # W&B gets the final pictures: the confusion matrix is drawn with matplotlib (cifarlab.report.figures).
    assert (offline[0], offline[1], offline[3]) == (0, {"torch", "wandb", "matplotlib"}, "")
    fake = probe(*common, "train.run_name=fake", "logging.wandb.mode=disabled", "data.name=fake",
                 "data.train_size=32", "data.test_size=8", cwd=tmp_path)
    assert (fake[0], fake[1], fake[3]) == (0, {"torch", "torchvision"}, "")
