"""Colleagues can read what a run writes: every file ends with the mode the user's umask gives a new file (0644
under umask 022), also the weights, predictions and decoded-image cache that safetensors creates 0600 and the
sweep record that tempfile creates 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_sweep
import yaml
from test_loop import tiny_config
from test_tensor_data import _folder

from cifarlab import files
from cifarlab import sweep as sweeps
from cifarlab.experiments.spec import read_sweep
from cifarlab.run import loop


@pytest.fixture
def umask_027() -> Iterator[None]:
    """A stricter umask than the usual 022, so a mode that merely happens to be 0644 does not pass."""
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def modes(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` with its permission bits, in octal."""
    return {str(path): oct(stat.S_IMODE(path.stat().st_mode)) for root in roots for path in root.rglob("*")
            if path.is_file()}


@pytest.mark.unit
def test_a_published_temporary_file_gets_the_umask_mode(tmp_path: Path, umask_027: None) -> None:
    assert files.umask() == 0o027 and files.normal_mode() == 0o640
    descriptor, temporary = tempfile.mkstemp(dir=tmp_path)
    os.close(descriptor)
    assert stat.S_IMODE(os.stat(temporary).st_mode) == 0o600
    files.publish(temporary, tmp_path / "record.yaml")
    assert stat.S_IMODE((tmp_path / "record.yaml").stat().st_mode) == 0o640
    assert not Path(temporary).exists()


@pytest.mark.unit
def test_every_run_file_cache_file_and_sweep_record_follows_the_umask(tmp_path: Path, umask_027: None) -> None:
    data = _folder(tmp_path / "data")
    config = tiny_config(tmp_path / "runs", "data.name=imagefolder", f"data.root={data}", "data.train_size=null",
                         "data.test_size=null", "train.batch_size=4", "train.eval_batch_size=4")
    run_dir = loop.train(config)
    written = modes(run_dir, data / ".cifarlab-cache")
    for name in ("model.safetensors", "predictions.safetensors", "checkpoints/best/model.safetensors",
                 "checkpoints/best/ema.safetensors", "config.yaml", "metrics.jsonl", "environment.json"):
        assert str(run_dir / name) in written, name
    assert any(".cifarlab-cache" in name for name in written)
    assert {mode for mode in written.values()} == {"0o640"}, written

    sweep_file = test_sweep.write(tmp_path, test_sweep.spec(seeds=[0]))
    arguments = [f"train.output_dir={tmp_path / 'sweeps'}"]
    sweep = read_sweep(str(sweep_file), arguments)
    test_sweep.fake_run(sweep, 0, finished=True)
    assert sweeps.main([str(sweep_file), *arguments]) == 0
    assert yaml.safe_load(sweep.record.read_text())["trials"][0]["name"] == "seed=0"
    assert oct(stat.S_IMODE(sweep.record.stat().st_mode)) == "0o640"


@pytest.mark.integration
def test_a_launched_run_with_wandb_offline_writes_every_file_0644_under_umask_022(
        launched_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    # The session's launched run (conftest): accelerate launch, 1 process, W&B offline, EMA, under umask 022.
    run_dir, _ = launched_run
    written = modes(run_dir)
    assert any("/wandb/" in name for name in written) and any(name.endswith("model.safetensors") for name in written)
    assert {mode for mode in written.values()} == {"0o644"}, written
