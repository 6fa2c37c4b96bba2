"""The trainer end to end on CPU: through its real CLI (``accelerate launch -m cifarlab.train``) where a launcher or a
second process is what is tested, otherwise through its ``main()`` or ``loop.train`` in this process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cifarlab.config import CIFAR10_CLASSES, load_config, to_dict

from conftest import (
    CONFIGS,
    assert_one_and_two_processes_agree_and_resume_exactly,
    assert_same_weights,
    check,
    cli_env,
    crashed_copy,
    error_lines,
    in_process,
    metrics,
    per_class,
    records,
    run_cli,
    smoke,
    train_here,
)
from wandb_offline import find_run_files, read_config, read_history, read_metric_definitions, read_summary

pytestmark = pytest.mark.integration


def test_smoke_run_writes_everything_and_logs_per_class_to_wandb(tmp_path: Path) -> None:
    result = check(run_cli(smoke(tmp_path, "smoke", "logging.wandb.mode=offline"), tmp_path))
    run_dir = tmp_path / "runs" / "smoke"
    assert (run_dir / "model.safetensors").is_file()
    assert "cat" in result.stdout and "test accuracy" in result.stdout  # the per-class table

    # The resolved config, with the run name filled in, loads back as the same config.
    saved = load_config(str(run_dir / "config.yaml"))
    assert saved.train.run_name == "smoke"
    assert saved.data.name == "fake"

    # Checkpoints: epoch ends and every 5 steps, the last checkpoint.keep_last=2 kept, and best/.
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert steps == ["best", "step_00000015", "step_00000016"]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000016"
    assert json.loads((run_dir / "checkpoints" / "step_00000016" / "trainer_state.json").read_text())["epoch"] == 2

    records = metrics(run_dir)
    assert [(m["train/epoch"], m["step"], m["test/images"]) for m in records] == [(1, 8, 100), (2, 16, 100)]
    assert set(per_class(records[-1])) == set(CIFAR10_CLASSES)
    assert all(m["train/epoch_images_per_s"] > 0 for m in records)

    # The offline W&B run holds the same numbers, per class, at increasing steps.
    (run_file,) = find_run_files(run_dir / "wandb")
    rows = read_history(run_file)
    evals = [row for row in rows if "test/acc" in row]
    assert [row["_step"] for row in evals] == [8, 16]
    for row, record in zip(evals, records):
        assert row["test/acc"] == pytest.approx(record["test/acc"])
        assert row["test/loss"] == pytest.approx(record["test/loss"])
        for name in CIFAR10_CLASSES:
            assert row[f"test/acc/{name}"] == pytest.approx(per_class(record)[name])
    train_rows = [row for row in rows if "train/loss" in row]
    assert [row["_step"] for row in train_rows] == [4, 8, 12, 16]
    assert all({"train/lr", "train/images_per_s", "train/epoch"} <= row.keys() for row in train_rows)
    steps_logged = [row["_step"] for row in rows]
    assert steps_logged == sorted(steps_logged)
    assert read_config(run_file)["optim"] == to_dict(saved)["optim"]

    # Media: the augmented training images at the start; predictions and the confusion matrix at the end.
    media = {key: (row["_step"], value) for row in rows for key, value in row.items()
             if isinstance(value, dict) and "_type" in value}
    assert media["media/train_images"][0] == 0
    assert {media[key][0] for key in ("media/test_predictions", "media/confusion_matrix",
                                      "test/confusion_matrix_table")} == {16}
    assert media["test/confusion_matrix_table"][1]["_type"] == "table-file"
    assert media["test/confusion_matrix_table"][1]["nrows"] == 100  # one row per test image
    for key in ("media/train_images", "media/test_predictions", "media/confusion_matrix"):
        assert media[key][1]["_type"] == "image-file"
        assert (run_file.parent / "files" / media[key][1]["path"]).is_file()
    summary = read_summary(run_file)
    best = max(records, key=lambda r: r["test/acc"])
    assert (summary["best/accuracy"], summary["best/epoch"]) == (pytest.approx(best["test/acc"]), best["train/epoch"])
    assert read_metric_definitions(run_file) == {"train/epoch": "", "test/*": "train/epoch", "val/*": "train/epoch"}


def test_a_validation_split_is_the_same_on_one_and_two_processes_and_reaches_wandb_under_its_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 30: 37 validation images (the last global batch padded on 2 processes) give the same val/* figures on 1
    and 2 processes; the test set is scored once, at the end; W&B holds val/* as metrics.jsonl does, charted against
    the epoch, and its best/accuracy is the best validation accuracy."""
    split = ("data.val_size=37", "train.eval_batch_size=8")
    check(in_process(smoke(tmp_path, "one", *split, "logging.wandb.mode=offline"), capsys))
    check(run_cli(smoke(tmp_path, "two", *split), tmp_path, processes=2))
    one, two = (metrics(tmp_path / "runs" / name) for name in ("one", "two"))
    assert [(m["val/images"], "test/acc" in m) for m in one] == [(37, False), (37, True)]
    for first, second in zip(one, two, strict=True):
        figures = [{k: v for k, v in m.items() if k.startswith(("val/", "test/")) and v is not None}
                   for m in (first, second)]
        assert figures[1] == pytest.approx(figures[0], abs=1e-6)
    (run_file,) = find_run_files(tmp_path / "runs" / "one" / "wandb")
    evals = [row for row in read_history(run_file) if "val/acc" in row]
    assert [(row["_step"], "test/acc" in row) for row in evals] == [(8, False), (16, True)]
    for row, record in zip(evals, one, strict=True):
        assert (row["val/acc"], row["val/loss"]) == pytest.approx((record["val/acc"], record["val/loss"]))
    assert read_summary(run_file)["best/accuracy"] == pytest.approx(max(m["val/acc"] for m in one))
    assert read_metric_definitions(run_file) == {"train/epoch": "", "test/*": "train/epoch", "val/*": "train/epoch"}


def test_one_and_two_processes_agree_and_resume_mid_epoch_is_exact(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # 37 test images in global batches of 8 over 2 processes: Accelerate pads the last batch. The helper also
    # resumes a run from its mid-epoch checkpoint (an explicit path) into a new run and compares.
    keep_all = "checkpoint.keep_last=100"
    full = assert_one_and_two_processes_agree_and_resume_exactly(tmp_path, capsys, "data.test_size=37",
                                                                 "train.eval_batch_size=8", keep_all)
    assert [m["test/acc"] for m in metrics(full)] == [m["test/acc"] for m in metrics(tmp_path / "runs" / "two")]

    # A run that died after its step-10 checkpoint (mid-epoch 2), continued with train.resume=auto.
    crashed = crashed_copy(full, tmp_path / "runs" / "crashed", "step_00000010")
    check(in_process(smoke(tmp_path, "crashed", "data.test_size=37", "train.eval_batch_size=8", keep_all,
                                   "train.resume=auto"), capsys))
    assert_same_weights(full / "model.safetensors", crashed / "model.safetensors")
    # metrics.jsonl holds each evaluation once (the lost epoch-2 record was dropped, then redone).
    def exact(run_dir: Path) -> list[dict]:  # every evaluation value (the epoch's loss and speed cover fewer batches)
        return [{k: v for k, v in m.items() if k.startswith("test/") or k in ("step", "train/epoch")}
                for m in metrics(run_dir)]
    assert exact(crashed) == exact(full)


def test_mixup_and_cutmix_train_the_same_on_one_and_two_processes_and_resume_exactly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Pairs of each global batch of 32 (16 a process), every pair's draws hashed from its sample indices.
    assert_one_and_two_processes_agree_and_resume_exactly(tmp_path, capsys, "data.test_size=37", "data.mixup=0.4",
                                                          "data.cutmix=1.0", "checkpoint.keep_last=100")


def test_resume_with_gradient_accumulation_is_exact(tmp_path: Path) -> None:
    options = ("checkpoint.keep_last=100", "train.grad_accum_steps=2", "checkpoint.every_n_steps=6")
    full = train_here(tmp_path, "full", *options)
    mid_epoch = full / "checkpoints" / "step_00000006"
    resumed = train_here(tmp_path, "resumed", *options, f"train.resume={mid_epoch}")
    assert_same_weights(full / "model.safetensors", resumed / "model.safetensors")


def test_an_existing_run_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before training: the trainer's main() in this process, its return code and its one stderr line."""
    final = train_here(tmp_path, "once", "train.epochs=1") / "model.safetensors"
    before = final.read_bytes()
    again = in_process(smoke(tmp_path, "once", "train.epochs=1"), capsys)
    assert again.returncode == 2
    assert error_lines(again.stderr) == [again.stderr.strip()]
    assert "already holds a run; continue it with train.resume=auto" in again.stderr
    assert final.read_bytes() == before
    missing = in_process(smoke(tmp_path, "other", f"train.resume={tmp_path / 'nope'}"), capsys)
    assert missing.returncode == 2 and "no such checkpoint directory" in missing.stderr


def test_bf16_runs_on_cpu_and_fp16_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Under the launcher, which says --mixed_precision no: the run's own setting wins.
    bf16 = check(run_cli(smoke(tmp_path, "bf16", "train.mixed_precision=bf16", "train.epochs=1"), tmp_path))
    assert "mixed precision bf16" in bf16.stdout
    assert (tmp_path / "runs" / "bf16" / "model.safetensors").is_file()
    fp16 = in_process(smoke(tmp_path, "fp16", "train.mixed_precision=fp16"), capsys)
    assert fp16.returncode == 2
    assert error_lines(fp16.stderr) == ["cifarlab: error: train.mixed_precision=fp16 needs a GPU (on a CPU PyTorch "
                                        "would silently train in fp32); use train.mixed_precision=bf16 or no"]
    assert not (tmp_path / "runs" / "fp16").exists()


def test_training_reduces_the_loss(tmp_path: Path) -> None:
    # Overfit 32 fixed images: the loss must fall from chance (ln 10 = 2.30) to near zero. Evaluated and saved at the
    # end only (the speed-record mode: the same training, test_loop.py checks), every epoch's loss still recorded.
    run = train_here(tmp_path, "overfit", "data.train_size=32", "data.test_size=10", "data.augment=none",
                     "train.epochs=30", "train.batch_size=8", "optim.lr=0.03", "optim.warmup_epochs=0",
                     "checkpoint.every_n_steps=null", "train.eval_every_epoch=false", "checkpoint.every_epoch=false")
    losses = [r["train/epoch_loss"] for r in records(run) if "train/epoch_loss" in r]
    assert len(losses) == 30
    assert losses[0] > 2.0
    assert losses[-1] < 0.1


def test_launch_errors_are_one_clear_line(tmp_path: Path) -> None:
    missing = run_cli(smoke(tmp_path, "nodata", "data.name=cifar10", f"data.root={tmp_path / 'none'}",
                            "data.download=false"), tmp_path)
    assert missing.returncode != 0
    (line,) = error_lines(missing.stderr)
    assert "data.root=" in line and "data.name=fake" in line
    uneven = run_cli(smoke(tmp_path, "uneven", "train.batch_size=33"), tmp_path, processes=2)
    assert uneven.returncode != 0
    assert error_lines(uneven.stderr) == ["cifarlab: error: train.batch_size=33 is the global batch and must divide "
                                          "by the 2 processes; use a multiple of 2"]
    assert not (tmp_path / "runs").exists()


def test_default_preset_learns_cifar10_in_one_epoch(tmp_path: Path, cifar10_jpeg: Path) -> None:
    check(run_cli(["--config", str(CONFIGS / "default.yaml"), "data.name=imagefolder", f"data.root={cifar10_jpeg}",
                   "train.epochs=1", f"train.output_dir={tmp_path / 'runs'}", "train.run_name=real",
                   "logging.wandb.mode=disabled"], tmp_path, timeout=600))
    (record,) = metrics(tmp_path / "runs" / "real")
    assert record["test/images"] == 10_000
    assert record["test/acc"] > 0.35
    assert yaml.safe_load((tmp_path / "runs" / "real" / "config.yaml").read_text())["data"]["name"] == "imagefolder"


def test_data_is_prepared_by_the_main_process_then_each_nodes_first_then_the_rest(tmp_path: Path) -> None:
    """Two 'nodes' of two gloo processes on this machine: rank 0 prepares alone, then node 1's first process
    (rank 2), then ranks 1 and 3: right for a data.root shared by the nodes and for a node-local one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    log = tmp_path / "order.jsonl"
    script = str(Path(__file__).with_name("data_order.py"))
    nodes = [subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                               "4", "--num_machines", "2", "--machine_rank", str(node), "--main_process_ip",
                               "127.0.0.1", "--main_process_port", port, "--mixed_precision", "no",
                               "--dynamo_backend", "no", script, str(log)], cwd=tmp_path, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs
    spans = {r["rank"]: r for r in map(json.loads, log.read_text().splitlines())}
    assert sorted(spans) == [0, 1, 2, 3] and spans[2]["local"] == 0 and spans[3]["local"] == 1
    assert spans[0]["out"] <= spans[2]["in"]  # the main process first, alone
    assert spans[2]["out"] <= min(spans[1]["in"], spans[3]["in"])  # then node 1's first process
