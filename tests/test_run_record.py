"""What a run leaves for the experiment layer: per-image predictions, elapsed time, the stop at a target
accuracy, the run record (environment.json) and the model artifact, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cifarlab.run.checkpoint import sha256
from cifarlab.run.rundir import RunDir

from conftest import check, crashed_copy, in_process, metrics, records, run_cli, smoke
from wandb_offline import find_run_files, read_artifacts, read_config, read_summary

pytestmark = pytest.mark.integration


def test_a_run_that_reaches_its_target_finishes_and_records_it(
        launched_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    # The session's launched run (conftest): 3 epochs, W&B offline, EMA; fake data is random, so 10 % accuracy is
    # reached at once and the run stops after epoch 1.
    run_dir, result = launched_run
    run = RunDir(run_dir)
    assert "reached the target accuracy 1.00 % at epoch 1 (step 8)" in result.stdout
    assert run.finished() and [m["step"] for m in metrics(run.root)] == [8]
    (target,) = [r for r in records(run.root) if "target/accuracy" in r]
    assert (target["target/accuracy"], target["target/epoch"], target["target/step"]) == (0.01, 1, 8)
    assert 0 < target["target/train_seconds"] < target["target/elapsed_s"] <= target["elapsed_s"]

    # elapsed_s on every record, never decreasing.
    elapsed = [r["elapsed_s"] for r in records(run.root)]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0

    # The predictions of the final (EMA) model: one per test image, in dataset order, matching test/acc.
    tensors = load_file(str(run.predictions))
    assert tensors["labels"].shape == tensors["predictions"].shape == (100,)
    assert tensors["logits"].shape == (100, 10)
    assert torch.equal(tensors["logits"].argmax(dim=1), tensors["predictions"])
    accuracy = (tensors["predictions"] == tensors["labels"]).double().mean().item()
    assert accuracy == pytest.approx(metrics(run.root)[-1]["test/acc"])
    with safe_open(str(run.predictions), "pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["classes"])[3] == "cat" and len(metadata["test_set"]) == 16

    # The run record: versions, process count, the command line and cifarlab's checkout; also in W&B.
    (start,) = json.loads(run.environment.read_text())["starts"]
    assert start["torch"] == torch.__version__.split("+")[0]
    assert start["python"] == ".".join(map(str, sys.version_info[:3]))
    assert (start["processes"], start["mixed_precision"], start["device"], start["gpus"]) == (1, "no", "cpu", [])
    assert start["command"][-1] == "train.ema=0.9" and "cifarlab.train" in start["command"]
    # The tests run from a git checkout (or worktree): its commit, never null (test_run_files checks the value).
    assert len(start["git"]["commit"]) == 40 and isinstance(start["git"]["dirty"], bool)
    (run_file,) = find_run_files(run.wandb)
    assert read_config(run_file)["environment"] == start

    # W&B: target/* in the summary; the final weights and best/ as versions of one model artifact.
    summary = read_summary(run_file)
    assert {key: summary[key] for key in target if key.startswith("target/")} == {
        key: value for key, value in target.items() if key.startswith("target/")}
    final, best = read_artifacts(run_file, "model")
    assert final["name"] == best["name"] == "model-target"
    assert "final" in final["aliases"] and "best" in best["aliases"]
    assert set(final["files"]) == {"model.safetensors", "config.yaml", "classes.json"}
    assert final["metadata"]["sha256"] == sha256(run.weights)
    assert best["metadata"]["manifest_sha256"] == sha256(run.best / "manifest.json")
    # Epoch 1 is both final and best: best/'s weight average, as a model file, is the final file byte for byte.
    assert final["metadata"]["sha256"] == best["metadata"]["sha256"]
    assert final["files"] == best["files"]


def test_every_rank_stops_at_the_target_together(tmp_path: Path) -> None:
    result = check(run_cli(smoke(tmp_path, "target2", "train.epochs=3", "train.target_accuracy=0.01"), tmp_path,
                           processes=2))
    run = RunDir(tmp_path / "runs" / "target2")
    assert "2 process(es)" in result.stdout and result.stdout.count("reached the target accuracy") == 1
    assert run.finished() and [m["step"] for m in metrics(run.root)] == [8]
    assert load_file(str(run.predictions))["labels"].shape == (100,)


def test_resume_continues_the_clock_and_a_run_stopped_while_finishing_writes_the_same_predictions(
        tmp_path: Path, smoke_reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = RunDir(smoke_reference)  # the session's smoke run, every checkpoint kept (conftest)
    # Died mid-epoch 2, then after its last checkpoint (while finishing): both resume to the same end.
    for name, last in (("mid", "step_00000010"), ("end", "step_00000016")):
        copy = crashed_copy(whole.root, tmp_path / "runs" / name, last)
        saved = json.loads((copy / "checkpoints" / last / "trainer_state.json").read_text())
        assert saved["elapsed_s"] > saved["train_s"] > 0
        check(in_process(smoke(tmp_path, name, "checkpoint.keep_last=100", "train.resume=auto"), capsys))
        resumed = RunDir(copy)
        after = [r for r in records(copy) if r["step"] > int(last[5:])]
        assert all(r["elapsed_s"] > saved["elapsed_s"] for r in after)
        ours, theirs = load_file(str(resumed.predictions)), load_file(str(whole.predictions))
        assert all(torch.equal(ours[key], theirs[key]) for key in ("labels", "predictions", "logits")), name
