"""cifarlab.analysis.results and python -m cifarlab.compare on run directories built here by hand (no training)."""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cifarlab import compare
from cifarlab.analysis import comparison, rendering, repeats, results, stats
from cifarlab.analysis.metric import METRICS
from cifarlab.analysis.results import ResultsError
from cifarlab.config import load_config, to_yaml
from cifarlab.identity import VOLATILE

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.unit

CLASSES = ["cat", "dog"]
ENV = {"python": "3.11.7", "torch": "2.4.0", "host": "node01", "processes": 1, "mixed_precision": "no", "gpus": [],
       "git": {"commit": "0123456789abcdef", "dirty": False}, "data_fingerprint": "d1"}


def make_run(root: Path, name: str, accuracies: list[float], *overrides: str, finished: bool = True,
             seed: int = 0, per_class: Optional[dict[str, Optional[float]]] = None,
             predictions: Optional[list[int]] = None, labels: Optional[list[int]] = None, test_set: str = "t1",
             environment: Any = None, target: Optional[dict[str, float]] = None,
             epoch_rates: Optional[list[tuple[float, float]]] = None, images: int = 100,
             losses: Optional[list[float]] = None) -> Path:
    """A run directory as the trainer writes it: one evaluation record per accuracy (and a training record
    before each), config.yaml from ``overrides``, environment.json, and on request predictions.safetensors
    (``predictions`` against ``labels``, by default all class 0) and a target record. Each evaluation scored
    ``images`` test images; its test loss is 1 - accuracy unless ``losses`` are given."""
    run = root / name
    run.mkdir(parents=True)
    config = load_config(None, [f"train.seed={seed}", f"train.run_name={name}", f"train.output_dir={root}",
                                *overrides])
    (run / "config.yaml").write_text(to_yaml(config))
    (run / "classes.json").write_text(json.dumps(CLASSES))
    lines = []
    for epoch, accuracy in enumerate(accuracies):
        rate, seconds = (epoch_rates or [(100.0, 10.0)] * len(accuracies))[epoch]
        lines.append({"step": 10 * epoch + 5, "time": 1e9 + epoch, "elapsed_s": 10.0 * epoch + 5,
                      "train/loss": 1.0, "train/lr": 0.05, "train/images_per_s": rate, "train/epoch": epoch + 0.5})
        classes = per_class if per_class is not None else {"cat": accuracy, "dog": accuracy}
        lines.append({"step": 10 * epoch + 10, "time": 1e9 + epoch + 0.5, "elapsed_s": 10.0 * epoch + 10,
                      "test/acc": accuracy, "test/loss": (losses or [1 - a for a in accuracies])[epoch],
                      "test/images": images,
                      **{f"test/acc/{k}": v for k, v in classes.items()}, "train/epoch": float(epoch + 1),
                      "train/epoch_loss": 1.0, "train/epoch_images_per_s": rate, "train/epoch_seconds": seconds})
    if target is not None:
        lines.append({"step": 10 * len(accuracies), "time": 1e9 + 99, "elapsed_s": 99.0, **target})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run / "environment.json").write_text(json.dumps(ENV if environment is None else environment))
    if predictions is not None:
        truth = labels if labels is not None else [0] * len(predictions)
        logits = torch.nn.functional.one_hot(torch.tensor(predictions), len(CLASSES)).float()
        save_file({"labels": torch.tensor(truth), "predictions": torch.tensor(predictions), "logits": logits},
                  str(run / "predictions.safetensors"), metadata={"test_set": test_set, "classes": json.dumps(CLASSES)})
    if finished:
        save_file({"w": torch.zeros(1)}, str(run / "model.safetensors"))
    return run


def split_run(root: Path, name: str, val: list[float], test: Optional[float], *overrides: str, val_images: int = 50,
              **options: Any) -> Path:
    """A run with a validation split (issue 30's metrics.jsonl): every evaluation scored the ``val`` accuracies on
    ``val_images`` images (``val/*`` only), and the last one the test set too (``test``, on 100 images; None: an
    unfinished run that has not got there). Validation losses are 1 - accuracy, the test loss 1 - test."""
    path = make_run(root, name, val, *overrides, images=val_images, **options)
    metrics = path / "metrics.jsonl"
    written = [json.loads(line) for line in metrics.read_text().splitlines()]
    evaluations = [r for r in written if "test/acc" in r]
    for record in evaluations:
        for key in [key for key in record if key.startswith("test/")]:
            record["val/" + key[len("test/"):]] = record.pop(key)
    if test is not None:
        evaluations[-1].update({"test/acc": test, "test/loss": 1 - test, "test/images": 100,
                                **{f"test/acc/{c}": test for c in CLASSES}})
    metrics.write_text("".join(json.dumps(r) + "\n" for r in written))
    return path


def outcomes(correct: list[bool]) -> list[int]:
    """Predictions against all-zero labels: class 0 where ``correct``, else class 1."""
    return [0 if right else 1 for right in correct]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert compare.main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert compare.main(list(args)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("cifarlab: error: "), captured.err
    return lines[0]


# --- reading runs ---------------------------------------------------------------------------------------


def test_read_run(tmp_path: Path) -> None:
    path = make_run(tmp_path, "a", [0.4, 0.7, 0.6], "optim.lr=0.1", per_class={"cat": 0.5, "dog": None},
                    environment={"starts": [{**ENV, "processes": 2}, {**ENV, "processes": 1}]},
                    target={"target/accuracy": 0.65, "target/epoch": 2, "target/step": 20, "target/elapsed_s": 20.5,
                            "target/train_seconds": 18.25},
                    epoch_rates=[(100.0, 1.0), (200.0, 3.0), (300.0, 0.0)])
    run = results.read_run(path)
    assert run.finished and run.path == path and run.name == "a"
    assert run.config["optim.lr"] == 0.1 and run.config["train.seed"] == 0 and run.config["model.name"] == "lenet"
    assert [r["test/acc"] for r in run.evaluations] == [0.4, 0.7, 0.6]
    assert run.final_accuracy() == 0.6 and run.best_accuracy() == 0.7
    assert run.final_loss() == pytest.approx(0.4)
    assert run.time_to_target() == 20.5 and run.train_time_to_target() == 18.25
    # images/s over the run: (100 * 1 + 200 * 3) / (1 + 3) = 175 (the epoch of 0 seconds adds nothing)
    assert run.images_per_s() == pytest.approx(175.0)
    assert run.per_class() == {"cat": 0.5, "dog": None}
    assert run.env("processes") == 2  # the first start
    assert results.evaluations(path) == run.evaluations and len(results.records(path)) == 7


def test_read_run_with_a_validation_split(tmp_path: Path) -> None:
    """Every evaluation scored the validation split, the last one the test set too: the test figures are the last
    record's that has them, the validation ones over every evaluation; per-class accuracies stay on the test set."""
    run = results.read_run(split_run(tmp_path, "split", [0.4, 0.7, 0.6], 0.55, epoch_rates=[(100.0, 1.0)] * 3))
    assert len(run.evaluations) == 3 and run.final == run.last("test") and run.last("val") == run.final
    assert run.final_accuracy() == 0.55 and run.best_accuracy() == 0.55 and run.final_loss() == pytest.approx(0.45)
    assert run.final_val_accuracy() == 0.6 and run.best_val_accuracy() == 0.7
    assert run.final_val_loss() == pytest.approx(0.4)
    assert run.test_images() == 100 and run.images("test") == 100 and run.images("val") == 50
    assert run.per_class() == {"cat": 0.55, "dog": 0.55} and run.images_per_s() == pytest.approx(100.0)
    # Stopped before the test set was scored: validation figures, no test ones.
    stopped = results.read_run(split_run(tmp_path, "stopped", [0.4, 0.7], None, finished=False))
    assert len(stopped.evaluations) == 2 and stopped.last("test") is None
    assert stopped.final_accuracy() is None and stopped.test_images() is None and stopped.per_class() == {}
    assert stopped.final_val_accuracy() == 0.7 and stopped.images("val") == 50
    # Without a split (data.val_size 0): no validation figures, the test ones as ever.
    plain = results.read_run(make_run(tmp_path, "plain", [0.4, 0.7, 0.6]))
    assert plain.final_val_accuracy() is None and plain.best_val_accuracy() is None and plain.final_val_loss() is None
    assert plain.images("val") is None and plain.final_accuracy() == 0.6 and plain.last("val") is None


def test_old_runs_without_environment_or_target(tmp_path: Path) -> None:
    path = make_run(tmp_path, "old", [0.5])
    (path / "environment.json").unlink()
    run = results.read_run(path)
    assert run.environment == {} and run.target is None and run.time_to_target() is None


def test_config_keys_the_schema_lacks_are_kept_and_new_ones_default(tmp_path: Path) -> None:
    path = make_run(tmp_path, "a", [0.5])
    (path / "config.yaml").write_text("optim:\n  lr: 0.2\n  retired_knob: 3\ntrain:\n  mixed_precision: no\n")
    config = results.read_run(path).config
    assert config["optim.lr"] == 0.2 and config["optim.retired_knob"] == 3
    assert config["train.epochs"] == 3 and config["train.mixed_precision"] == "no"


def test_a_torn_last_line_is_dropped_only_in_unfinished_runs(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    for name, finished in (("stopped", False), ("done", True)):
        path = make_run(tmp_path, name, [0.5, 0.6], finished=finished)
        with open(path / "metrics.jsonl", "a") as handle:
            handle.write('{"step": 30, "test/a')
    assert [r["test/acc"] for r in results.read_run(tmp_path / "stopped").evaluations] == [0.5, 0.6]
    assert capsys.readouterr().err == (f"cifarlab: note: {tmp_path / 'stopped' / 'metrics.jsonl'}:5: left out a torn "
                                       f"last line (the run is unfinished: its trainer was killed, or is still "
                                       f"writing, mid-line)\n")
    with pytest.raises(ResultsError, match=r"metrics.jsonl:5: not a JSON record .*its last line, in a finished run"):
        results.read_run(tmp_path / "done")
    # A damaged line that is not the last is never a torn tail.
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + "\n" + '{"step": 31}\n')
    with pytest.raises(ResultsError, match=r"metrics.jsonl:5: not a JSON record .*not its last line"):
        results.read_run(tmp_path / "stopped")


def test_read_predictions(tmp_path: Path) -> None:
    path = make_run(tmp_path, "a", [0.5], predictions=[0, 1, 1, 0], labels=[0, 1, 0, 0], test_set="abc")
    predictions = results.read_run(path).predictions()
    assert predictions.test_set == "abc" and predictions.classes == CLASSES
    assert predictions.correct().tolist() == [True, True, False, True]


def test_find_runs_in_sweeps_globs_and_run_dirs(tmp_path: Path) -> None:
    sweep = tmp_path / "runs" / "sweep"
    a, b = make_run(sweep, "a", [0.5]), make_run(sweep / "nested", "b", [0.5])
    # W&B keeps a config.yaml of its own inside a run: not a run.
    (a / "wandb" / "offline-run-1" / "files").mkdir(parents=True)
    (a / "wandb" / "offline-run-1" / "files" / "config.yaml").write_text("x: 1\n")
    other = make_run(tmp_path / "runs", "other", [0.5])
    assert results.find_runs([str(sweep)]) == [a, b]
    # sorted by path, each once (a pattern and a path may name the same run)
    assert results.find_runs([str(tmp_path / "runs")]) == [other, a, b]
    assert results.find_runs([str(sweep / "*"), str(other), str(tmp_path / "runs" / "o*")]) == [other, a, b]
    with pytest.raises(ResultsError, match="no such file or directory"):
        results.find_runs([str(tmp_path / "nowhere")])
    with pytest.raises(ResultsError, match="no such file or directory"):
        results.find_runs([str(tmp_path / "runs" / "x*")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="holds no run directory"):
        results.find_runs([str(tmp_path / "empty")])


# --- statistics through the CLI -------------------------------------------------------------------------


def lr_sweep(root: Path) -> Path:
    """lr 0.05: final accuracies 0.5, 0.6, 0.7 (seeds 0-2); lr 0.1: 0.6, 0.7, 0.8 (seeds 0-2)."""
    for lr, finals in (("0.05", [0.5, 0.6, 0.7]), ("0.1", [0.6, 0.7, 0.8])):
        for seed, final in enumerate(finals):
            make_run(root, f"lr{lr}-s{seed}", [0.3, final], f"optim.lr={lr}", seed=seed,
                     per_class={"cat": final - 0.1, "dog": final + 0.1})
    return root


def test_groups_means_intervals_and_welch_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, str(lr_sweep(tmp_path / "sweep")))
    assert out["metric"] == "final_acc" and out["grouped_by"] == ["optim.lr"] and out["baseline"] == "optim.lr=0.05"
    first, second = out["groups"]
    assert [first["label"], second["label"]] == ["optim.lr=0.05", "optim.lr=0.1"]
    assert first["overrides"] == {"optim.lr": 0.05} and first["n"] == 3 and len(first["runs"]) == 3
    # [0.5, 0.6, 0.7]: mean 0.6, std 0.1, interval 0.6 -+ 4.30265273 * 0.1 / sqrt(3)
    half = 4.30265273 * 0.1 / math.sqrt(3)
    assert first["mean"] == pytest.approx(0.6) and first["std"] == pytest.approx(0.1)
    assert first["ci95"] == pytest.approx([0.6 - half, 0.6 + half], abs=1e-7)
    assert second["mean"] == pytest.approx(0.7) and second["ci95"] == pytest.approx([0.7 - half, 0.7 + half], abs=1e-7)
    # per class: cat = final - 0.1, dog = final + 0.1, so the means are 0.5 and 0.7 for lr 0.05
    assert first["per_class"] == pytest.approx({"cat": 0.5, "dog": 0.7})
    # Welch: equal variances 0.01, n 3 each: df 4, se sqrt(0.02/3); 0.1 -+ 2.77644511 * 0.0816497
    (difference,) = out["differences"]
    se = math.sqrt(0.02 / 3)
    assert difference["group"] == "optim.lr=0.1" and difference["baseline"] == "optim.lr=0.05"
    assert difference["diff"] == pytest.approx(0.1) and difference["df"] == pytest.approx(4.0)
    assert difference["ci95"] == pytest.approx([0.1 - 2.77644511 * se, 0.1 + 2.77644511 * se], abs=1e-7)
    assert difference["per_class"] == pytest.approx({"cat": 0.1, "dog": 0.1})
    assert difference["paired"] is None  # no predictions
    assert difference["test"] == "welch" and difference["p"] == pytest.approx(0.288, abs=1e-3)
    assert difference["p_adjusted"] == difference["p"] and difference["ci95_adjusted"] == difference["ci95"]  # k = 1
    assert difference["verdict"] == ("optim.lr=0.1 vs optim.lr=0.05: no significant difference "
                                     "(Welch t on runs, p = 0.288)")
    assert out["missing"] == [] and out["warnings"] == []


def test_the_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, str(lr_sweep(tmp_path / "sweep")))
    assert set(out) == {"metric", "higher_is_better", "grouped_by", "baseline", "adjust", "groups", "differences",
                        "plan", "missing", "merged", "warnings", "notes"}
    assert set(out["groups"][0]) == {"label", "overrides", "n", "mean", "std", "floor", "ci95", "values", "spread",
                                     "runs", "per_class"}
    assert set(out["differences"][0]) == {"group", "baseline", "diff", "ci95", "df", "test", "p", "p_adjusted",
                                          "ci95_adjusted", "paired", "verdict", "per_class"}
    assert out["adjust"] == "holm" and out["plan"] is None


def test_table_shows_percent_and_n_below_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", [0.61234])
    make_run(tmp_path, "b", [0.7], "optim.lr=0.1")
    assert compare.main([str(tmp_path), "--per-class"]) == 0
    out = capsys.readouterr().out
    assert "final test accuracy (%) by group" in out and "61.23" in out and "n<2" in out
    assert "optim.lr=0.05 (baseline)" in out and "+8.77" in out
    assert "optim.lr=0.1 vs optim.lr=0.05: 1 and 1 run(s): no verdict about the settings" in out
    assert "final accuracy per class" in out and "70.0 (+8.8)" in out


def test_best_accuracy_loss_and_one_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", [0.7, 0.5], seed=1)
    make_run(tmp_path, "b", [0.9, 0.6], seed=2)
    best = run_json(capsys, str(tmp_path), "--metric", "best_acc")
    assert [g["label"] for g in best["groups"]] == ["all"] and best["differences"] == []
    assert best["groups"][0]["values"] == [0.7, 0.9] and best["groups"][0]["mean"] == pytest.approx(0.8)
    loss = run_json(capsys, str(tmp_path), "--metric", "test_loss")
    assert loss["groups"][0]["values"] == pytest.approx([0.5, 0.4]) and loss["higher_is_better"] is False


def test_validation_metrics_judge_the_split_and_floor_on_its_images(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """val_acc, best_val_acc and val_loss read val/*; an accuracy's floor is the sampling error on the validation
    images (50 here), not the test set's 100; a run without a split is left out, saying why."""
    for seed in (0, 1):
        split_run(tmp_path, f"a{seed}", [0.5, 0.4], 0.6, seed=seed)
        split_run(tmp_path, f"b{seed}", [0.9, 0.8], 0.7, "optim.lr=0.1", seed=seed)
    make_run(tmp_path, "plain", [0.5], "optim.lr=0.1", seed=2)
    final = run_json(capsys, str(tmp_path), "--metric", "val_acc")
    assert [g["values"] for g in final["groups"]] == [[0.4, 0.4], [0.8, 0.8]]
    assert [g["floor"] for g in final["groups"]] == pytest.approx([math.sqrt(0.4 * 0.6 / 50),
                                                                   math.sqrt(0.8 * 0.2 / 50)])
    assert final["differences"][0]["verdict"].startswith("optim.lr=0.1 better than optim.lr=0.05")
    assert final["missing"] == [{"run": str(tmp_path / "plain"),
                                 "reason": "no validation record (data.val_size 0: no validation split held out)"}]
    best = run_json(capsys, str(tmp_path), "--metric", "best_val_acc")
    assert [g["values"] for g in best["groups"]] == [[0.5, 0.5], [0.9, 0.9]]
    loss = run_json(capsys, str(tmp_path), "--metric", "val_loss")
    assert [v for g in loss["groups"] for v in g["values"]] == pytest.approx([0.6, 0.6, 0.2, 0.2])
    assert loss["higher_is_better"] is False and loss["groups"][0]["floor"] is None
    test = run_json(capsys, str(tmp_path), "--metric", "final_acc")  # the test set's, on its own 100 images
    assert [g["values"] for g in test["groups"]] == [[0.6, 0.6], [0.7, 0.7, 0.5]]
    assert test["groups"][0]["floor"] == pytest.approx(math.sqrt(0.6 * 0.4 / 100))
    assert compare.main([str(tmp_path), "--metric", "val_acc"]) == 0
    captured = capsys.readouterr()
    assert "final validation accuracy (%) by group" in captured.out
    assert "validation-split sampling alone vs seed luck" in captured.out
    assert "runs spread less than validation-split sampling alone makes an accuracy vary" in captured.err


def test_final_top5_where_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed, top5 in enumerate([0.9, 0.8, None]):
        run = make_run(tmp_path, f"s{seed}", [0.5], seed=seed)
        if top5 is not None:  # what a run on more than 5 classes records beside test/acc
            metrics = run / "metrics.jsonl"
            records = [json.loads(line) for line in metrics.read_text().splitlines()]
            records[-1]["test/acc_top5"] = top5
            metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = run_json(capsys, str(tmp_path), "--metric", "final_top5")
    assert out["groups"][0]["values"] == [0.9, 0.8] and out["groups"][0]["mean"] == pytest.approx(0.85)
    assert [m["reason"] for m in out["missing"]] == ["no top-5 accuracy recorded (5 classes or fewer, or an older run)"]


def test_time_to_target_leaves_out_runs_that_missed_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed, elapsed in enumerate([30.0, 40.0, None]):
        target = None if elapsed is None else {"target/accuracy": 0.6, "target/epoch": 1, "target/step": 10,
                                               "target/elapsed_s": elapsed, "target/train_seconds": elapsed - 5}
        make_run(tmp_path, f"s{seed}", [0.6], "train.target_accuracy=0.6", seed=seed, target=target)
    out = run_json(capsys, str(tmp_path), "--metric", "time_to_target")
    assert out["groups"][0]["values"] == [30.0, 40.0] and out["groups"][0]["mean"] == 35.0
    assert out["missing"] == [{"run": str(tmp_path / "s2"), "reason": "did not reach train.target_accuracy"}]
    train = run_json(capsys, str(tmp_path), "--metric", "train_time_to_target")
    assert train["groups"][0]["values"] == [25.0, 35.0]


def test_unfinished_runs_are_listed_not_compared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "done", [0.5])
    make_run(tmp_path, "running", [0.9], "optim.lr=0.1", finished=False)
    out = run_json(capsys, str(tmp_path))
    assert [g["label"] for g in out["groups"]] == ["all"]  # the unfinished run's lr does not split groups
    assert out["missing"] == [{"run": str(tmp_path / "running"), "reason": "not finished"}]
    assert f"1 of 2 runs not finished: {tmp_path / 'running'}" in capsys.readouterr().err + "".join(out["notes"])


# --- grouping -------------------------------------------------------------------------------------------


def test_by_environment_field_and_warnings_for_mixed_groups(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "p1", [0.5], environment={**ENV, "processes": 1})
    make_run(tmp_path, "p2", [0.6], environment={**ENV, "processes": 2})
    make_run(tmp_path, "p2-lr", [0.7], "optim.lr=0.1", environment={**ENV, "processes": 2})
    out = run_json(capsys, str(tmp_path), "--by", "env.processes")
    assert [g["label"] for g in out["groups"]] == ["env.processes=1", "env.processes=2"]
    assert out["warnings"] == ["group env.processes=2 mixes runs that differ in optim.lr"]
    both = run_json(capsys, str(tmp_path), "--by", "env.processes", "--by", "optim.lr")
    assert [g["label"] for g in both["groups"]] == ["env.processes=1, optim.lr=0.05", "env.processes=2, optim.lr=0.05",
                                                    "env.processes=2, optim.lr=0.1"]
    assert both["warnings"] == []


def test_keys_that_never_change_what_is_computed_do_not_split_groups(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 27: compare split one configuration by keys identity.VOLATILE lists (one list now).
    volatile = ["train.cpu_threads=2", "checkpoint.every_n_steps=5", "train.timeout_minutes=10",
                "train.allow_changes=true", "data.download=false", "train.eval_every_epoch=false"]
    make_run(tmp_path, "plain", [0.5], seed=0)
    for seed, setting in enumerate(volatile, start=1):
        make_run(tmp_path, f"v{seed}", [0.5 + seed / 100], setting, seed=seed)
    out = run_json(capsys, str(tmp_path))
    assert [(g["label"], g["n"]) for g in out["groups"]] == [("all", 7)] and out["merged"] == []
    assert set(comparison.IGNORED) == {"train.seed", *VOLATILE}


def test_ignored_keys_do_not_split_groups_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", [0.5], "data.num_workers=0", "logging.every_n_steps=7", seed=1)
    make_run(tmp_path, "b", [0.6], "data.root=/elsewhere", seed=2)
    assert [g["label"] for g in run_json(capsys, str(tmp_path))["groups"]] == ["all"]
    by_seed = run_json(capsys, str(tmp_path), "--by", "train.seed")
    assert [g["label"] for g in by_seed["groups"]] == ["train.seed=1", "train.seed=2"]


def test_groups_sort_by_value_and_baseline_choices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for lr, final in (("0.2", 0.4), ("0.05", 0.5), ("0.1", 0.6)):
        make_run(tmp_path, f"lr{lr}", [final], f"optim.lr={lr}")
    labels = ["optim.lr=0.05", "optim.lr=0.1", "optim.lr=0.2"]
    assert [g["label"] for g in run_json(capsys, str(tmp_path))["groups"]] == labels
    for choice in ("2", "optim.lr=0.1"):
        out = run_json(capsys, str(tmp_path), "--baseline", choice)
        assert out["baseline"] == "optim.lr=0.1"
        assert [(d["group"], d["diff"]) for d in out["differences"]] == [("optim.lr=0.05", pytest.approx(-0.1)),
                                                                         ("optim.lr=0.2", pytest.approx(-0.2))]
    error = usage_error(capsys, str(tmp_path), "--baseline", "optim.lr=0.3")
    assert "--baseline optim.lr=0.3: no such group" in error and "optim.lr=0.2" in error
    assert "no such group" in usage_error(capsys, str(tmp_path), "--baseline", "4")


# --- one measurement, counted once ----------------------------------------------------------------------


def test_copies_of_one_measurement_are_counted_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 27: two runs of lr 0.02 and two of lr 0.2, each pair one configuration with train.seed 0 (CPU runs repeat
    # bit for bit), gave std 0.00, interval [+2.00, +2.00] and "better, p = 0". They are one run a side.
    for copy in ("a", "b"):
        make_run(tmp_path, f"lr0.02-{copy}", [0.60], "optim.lr=0.02")
        make_run(tmp_path, f"lr0.2-{copy}", [0.62], "optim.lr=0.2", f"logging.every_n_steps={1 + (copy == 'b')}")
    assert compare.main([str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [(g["label"], g["n"], g["runs"]) for g in out["groups"]] == [
        ("optim.lr=0.02", 1, [str(tmp_path / "lr0.02-a")]), ("optim.lr=0.2", 1, [str(tmp_path / "lr0.2-a")])]
    reason = "same configuration and seed"
    assert out["merged"] == [{"run": str(tmp_path / "lr0.02-b"), "kept": str(tmp_path / "lr0.02-a"), "reason": reason},
                             {"run": str(tmp_path / "lr0.2-b"), "kept": str(tmp_path / "lr0.2-a"), "reason": reason}]
    assert out["differences"][0]["verdict"].endswith("1 and 1 run(s): no verdict about the settings: that needs 2 or "
                                                     "more runs (seeds) in each group")
    notes = [line for line in captured.err.splitlines() if "counted once" in line]
    assert notes == [f"cifarlab: note: counted once: 2 run(s) repeat a measurement that another run of their group "
                     f"holds: {tmp_path / 'lr0.02-b'} as {tmp_path / 'lr0.02-a'} ({reason}); {tmp_path / 'lr0.2-b'} as "
                     f"{tmp_path / 'lr0.2-a'} ({reason})"]


def test_a_sweep_beside_a_confirmation_on_the_same_seeds_counts_each_seed_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One's own lr sweep (seeds 0-2) compared with a search's confirm/ folder (seeds 1, 2 at the same lr).
    for seed in (0, 1, 2):
        make_run(tmp_path / "sweep", f"lr0.02-s{seed}", [0.60 + seed / 100], "optim.lr=0.02", seed=seed)
    for seed in (1, 2):
        make_run(tmp_path / "search" / "confirm", f"c{seed}", [0.60 + seed / 100], "optim.lr=0.02", seed=seed)
    out = run_json(capsys, str(tmp_path / "sweep"), str(tmp_path / "search"))
    (group,) = out["groups"]
    assert group["n"] == 3 and group["values"] == pytest.approx([0.61, 0.62, 0.60])  # path order: search/ first
    assert [(m["run"], m["kept"]) for m in out["merged"]] == [
        (str(tmp_path / "sweep" / f"lr0.02-s{seed}"), str(tmp_path / "search" / "confirm" / f"c{seed}"))
        for seed in (1, 2)]


def _reorder_header(path: Path) -> None:
    """Rewrites a safetensors file's header with its keys (and its metadata's) in reverse order, same length: what
    safetensors itself does between two saves of one content (it writes a hash map's order)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header = {key: (dict(reversed(value.items())) if key == "__metadata__" else value)
              for key, value in reversed(header.items())}
    text = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(data[:8] + text.ljust(size) + data[8 + size:])


def test_identical_predictions_are_one_measurement_and_merging_is_idempotent(tmp_path: Path) -> None:
    right = [True] * 70 + [False] * 30
    make_run(tmp_path, "a", [0.7], seed=0, predictions=outcomes(right))
    make_run(tmp_path, "b", [0.7], seed=1, predictions=outcomes(right))  # other seed, the same bits: a copy
    make_run(tmp_path, "c", [0.7], seed=1, predictions=outcomes(right[::-1]))  # b's seed: a copy of b, so of a
    make_run(tmp_path, "d", [0.7], seed=2, predictions=outcomes(right[::-1]))  # c's predictions: a copy of c
    make_run(tmp_path, "e", [0.6], seed=3)
    _reorder_header(tmp_path / "b" / "predictions.safetensors")  # as safetensors may write it: other bytes
    assert (tmp_path / "a" / "predictions.safetensors").read_bytes() != (tmp_path / "b" / "predictions.safetensors"
                                                                         ).read_bytes()
    runs = results.read_runs([str(tmp_path)])
    assert runs[0].predictions_digest() == runs[1].predictions_digest() != runs[2].predictions_digest()
    assert runs[4].predictions_digest() is None
    kept, merged = repeats.merge(runs[::-1])
    assert [run.name for run in kept] == ["a", "e"]
    assert [(m.run.name, m.kept.name, m.reason) for m in merged] == [
        ("b", "a", "identical predictions.safetensors, same configuration and seed"),
        ("c", "a", "identical predictions.safetensors, same configuration and seed"),
        ("d", "a", "identical predictions.safetensors")]
    assert repeats.merge(kept) == (kept, [])


def test_runs_that_by_keeps_apart_are_not_merged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One configuration and seed on 1 and on 2 processes: --by env.processes compares them; each group is one run.
    make_run(tmp_path, "p1", [0.60], environment={**ENV, "processes": 1})
    make_run(tmp_path, "p2", [0.61], environment={**ENV, "processes": 2})
    out = run_json(capsys, str(tmp_path), "--by", "env.processes")
    assert [g["n"] for g in out["groups"]] == [1, 1] and out["merged"] == []
    assert [g["n"] for g in run_json(capsys, str(tmp_path))["groups"]] == [1]


# --- paired tests ---------------------------------------------------------------------------------------


def test_mcnemar_for_one_run_per_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 100 images: both right on 50, A alone on 10, B alone on 30, neither on 10.
    a = [True] * 50 + [True] * 10 + [False] * 30 + [False] * 10
    b = [True] * 50 + [False] * 10 + [True] * 30 + [False] * 10
    make_run(tmp_path, "a", [0.6], predictions=outcomes(a))
    make_run(tmp_path, "b", [0.8], "optim.lr=0.1", predictions=outcomes(b))
    (difference,) = run_json(capsys, str(tmp_path))["differences"]
    paired = difference["paired"]
    assert paired["test"] == "mcnemar" and paired["images"] == 100
    assert paired["only_baseline_right"] == 10 and paired["only_group_right"] == 30
    assert paired["p"] == pytest.approx(2 * sum(math.comb(40, k) for k in range(11)) / 2 ** 40, rel=1e-12)
    assert paired["diff"] == pytest.approx(0.2) and difference["diff"] == pytest.approx(0.2)
    assert difference["ci95"] is None  # one run a side: no Welch interval
    assert difference["test"] == "mcnemar" and difference["p"] == paired["p"]
    # One run a side says nothing about the settings, however small McNemar's p: only that these models differ.
    assert difference["verdict"] == (
        "optim.lr=0.1 vs optim.lr=0.05: one run each: these two trained models differ on this test set "
        "(McNemar p = 0.00222); no verdict about the settings: that needs 2 or more runs (seeds) in each group")


def test_identical_runs_are_no_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Each seed gets 70 of 100 right, other images for the two seeds (the same predictions would be one run).
    for seed in (0, 1):
        right = [True] * 70 + [False] * 30 if seed == 0 else [False] * 30 + [True] * 70
        make_run(tmp_path, f"a{seed}", [0.7], seed=seed, predictions=outcomes(right))
        make_run(tmp_path, f"b{seed}", [0.7], "optim.lr=0.1", seed=seed, predictions=outcomes(right))
    (difference,) = run_json(capsys, str(tmp_path))["differences"]
    assert difference["paired"] is None and difference["test"] == "welch"  # McNemar only for one run a side
    assert difference["diff"] == 0.0 and difference["p"] == 1.0
    assert "no significant difference" in difference["verdict"]


def test_two_runs_each_far_apart_on_the_test_set_but_not_across_seeds(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # The case of issue 20: 2 runs a side, 400 images each. Over the images the groups differ clearly (a paired
    # bootstrap said p < 0.01, "better"), but the seeds of each group disagree by 10 points: Welch on the runs,
    # 0.15 -+ t(0.975, 2) * sqrt(0.005 / 2 * 2) = 0.15 -+ 4.30265 * 0.0707107, crosses 0: no verdict of "better".
    generator = torch.Generator().manual_seed(0)
    for seed, (rate_a, rate_b) in enumerate(((0.55, 0.70), (0.65, 0.80))):
        for name, rate, lr in (("a", rate_a, "0.05"), ("b", rate_b, "0.1")):
            right = (torch.arange(400) < int(rate * 400))[torch.randperm(400, generator=generator)].tolist()
            make_run(tmp_path, f"{name}{seed}", [rate], f"optim.lr={lr}", seed=seed, predictions=outcomes(right))
    (difference,) = run_json(capsys, str(tmp_path))["differences"]
    half = 4.30265273 * math.sqrt(0.005)
    assert difference["diff"] == pytest.approx(0.15) and difference["df"] == pytest.approx(2.0)
    assert difference["ci95"] == pytest.approx([0.15 - half, 0.15 + half], abs=1e-7)
    assert difference["p"] > 0.05 and difference["verdict"].endswith("no significant difference (Welch t on runs, "
                                                                     f"p = {difference['p']:.3g})")


def test_five_runs_each_find_a_real_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 5 seeds a side, 0.6 points of spread, 2 points apart: Welch finds it, and the verdict, interval and p agree.
    # 10,000 test images: the test-set floor, 0.48 points, lies below that spread. Each seed its own predictions.
    spread = [-0.006, -0.003, 0.0, 0.003, 0.006]
    for seed, offset in enumerate(spread):
        make_run(tmp_path, f"a{seed}", [0.63 + offset], seed=seed, predictions=outcomes([True] * seed + [False]),
                 images=10_000)
        make_run(tmp_path, f"b{seed}", [0.65 + offset], "optim.lr=0.1", seed=seed,
                 predictions=outcomes([True] * seed + [True]), images=10_000)
    (difference,) = run_json(capsys, str(tmp_path))["differences"]
    assert difference["test"] == "welch" and difference["paired"] is None
    assert difference["diff"] == pytest.approx(0.02) and difference["ci95"][0] > 0 and difference["p"] < 0.001
    assert difference["verdict"].startswith("optim.lr=0.1 better than optim.lr=0.05 at the 5 % level (Welch t on runs")


def test_runs_without_predictions_skip_the_paired_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", [0.6], predictions=outcomes([True, False]))
    make_run(tmp_path, "b", [0.8], "optim.lr=0.1")
    out = run_json(capsys, str(tmp_path))
    assert out["differences"][0]["paired"] is None
    assert any("skipped: 1 run(s) without predictions.safetensors" in note for note in out["notes"])


def test_different_test_sets_are_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", [0.6], predictions=outcomes([True, False]), test_set="t1")
    make_run(tmp_path, "b", [0.8], "optim.lr=0.1", predictions=outcomes([True, True]), test_set="t2")
    assert "were evaluated on different test sets" in usage_error(capsys, str(tmp_path))


def test_paired_tests_only_for_final_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", [0.6], predictions=outcomes([True, False]))
    make_run(tmp_path, "b", [0.8], "optim.lr=0.1", predictions=outcomes([True, True]))
    out = run_json(capsys, str(tmp_path), "--metric", "best_acc")
    assert out["differences"][0]["paired"] is None
    assert any("McNemar compares two final models' predictions: only with --metric final_acc" in note
               for note in out["notes"])


# --- several groups, spread, planning, output -----------------------------------------------------------


def three_groups(root: Path) -> Path:
    """Baseline lr 0.05: 0.50, 0.51, 0.52; lr 0.1: 0.505, 0.515, 0.525; lr 0.2: 0.525, 0.535, 0.545 (10,000 test
    images: the test-set floor, 0.5 points, lies below their spread)."""
    for lr, finals in (("0.05", [0.50, 0.51, 0.52]), ("0.1", [0.505, 0.515, 0.525]), ("0.2", [0.525, 0.535, 0.545])):
        for seed, final in enumerate(finals):
            make_run(root, f"lr{lr}-s{seed}", [final], f"optim.lr={lr}", seed=seed, images=10_000)
    return root


def test_several_comparisons_are_holm_adjusted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Welch, std 0.01 in each group, n 3: se = sqrt(2 * 0.0001 / 3) = 0.0081650, df 4.
    # lr 0.2: t = 0.025 / se = 3.0619, p = 0.0376; lr 0.1: t = 0.6124, p = 0.5734.
    # Holm, k = 2: 2 * 0.0376 = 0.0753 (not below 0.05 any more), then max(0.0753, 0.5734).
    out = run_json(capsys, str(three_groups(tmp_path)))
    second, third = out["differences"]
    assert third["p"] == pytest.approx(0.03763, abs=1e-4) and second["p"] == pytest.approx(0.57339, abs=1e-4)
    assert third["p_adjusted"] == pytest.approx(2 * third["p"]) and second["p_adjusted"] == second["p"]
    assert third["verdict"] == (f"optim.lr=0.2 vs optim.lr=0.05: no significant difference (Welch t on runs, "
                                f"p = {third['p_adjusted']:.3g}, holm-adjusted)")
    # Its interval at Holm's first step, 1 - 0.05 / 2: t(0.9875, 4) = 3.4954.
    se = math.sqrt(2 * 0.0001 / 3)
    assert third["ci95_adjusted"] == pytest.approx([0.025 - 3.49541 * se, 0.025 + 3.49541 * se], abs=1e-5)
    assert third["ci95_adjusted"][0] < 0 < third["ci95"][0]
    unadjusted = run_json(capsys, str(tmp_path), "--adjust", "none")
    assert unadjusted["adjust"] == "none" and unadjusted["differences"][1]["p_adjusted"] == third["p"]
    assert unadjusted["differences"][1]["verdict"] == ("optim.lr=0.2 better than optim.lr=0.05 at the 5 % level "
                                                       f"(Welch t on runs, p = {third['p']:.3g})")
    bh = run_json(capsys, str(tmp_path), "--adjust", "bh")["differences"]
    assert bh[1]["p_adjusted"] == pytest.approx(2 * third["p"]) and bh[0]["p_adjusted"] == pytest.approx(second["p"])


def issue_27_groups(root: Path) -> Path:
    """Issue 27's three learning rates on 10,000 test images: lr 0.01: 0.50, 0.52, 0.54; lr 0.02: 0.563, 0.593,
    0.623; lr 0.03: 0.556, 0.586, 0.616."""
    for lr, finals in (("0.01", [0.50, 0.52, 0.54]), ("0.02", [0.563, 0.593, 0.623]),
                       ("0.03", [0.556, 0.586, 0.616])):
        for seed, final in enumerate(finals):
            make_run(root, f"lr{lr}-s{seed}", [final], f"optim.lr={lr}", seed=seed, images=10_000)
    return root


def test_holm_adjusted_intervals_agree_with_the_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # By hand: std 0.02 (lr 0.01) and 0.03 (the others), n 3 (floors 0.005 at 10,000 images: below): se^2 =
    # (0.0004 + 0.0009) / 3, se = 0.0208167; df = (0.0013/3)^2 / ((0.0004/3)^2 / 2 + (0.0009/3)^2 / 2) = 3.48454.
    # lr 0.02: t = 0.073 / se = 3.50681, p = 0.0309; lr 0.03: t = 0.066 / se = 3.17054, p = 0.0410.
    # Holm: 2 * 0.0309 = 0.0619, not below 0.05: it stops at step 1, nothing found, and both intervals take step 1's
    # level 1 - 0.05 / 2. Before, lr 0.03 took its own step's 95 % and showed [+0.47, +12.73] beside "no significant
    # difference". At 97.5 % the half-width is t(0.9875, 3.48) * se, above t(0.9875, 4) * se = 3.49541 * 0.0208167 =
    # 0.0728 > 0.066: lr 0.03's interval includes 0 (and lr 0.02's too, its p being above 0.025).
    out = run_json(capsys, str(issue_27_groups(tmp_path)))
    se = math.sqrt(0.0013 / 3)
    df = (0.0013 / 3) ** 2 / ((0.0004 / 3) ** 2 / 2 + (0.0009 / 3) ** 2 / 2)
    half = stats.t_quantile(0.9875, df) * se
    assert df == pytest.approx(3.48454, abs=1e-5) and half > 3.49541 * se > 0.066
    for d, diff, p in zip(out["differences"], (0.073, 0.066), (0.030946, 0.041018)):
        assert d["diff"] == pytest.approx(diff) and d["df"] == pytest.approx(df)
        assert d["p"] == pytest.approx(p, abs=1e-6)
        assert d["p_adjusted"] == pytest.approx(0.0618922, abs=1e-7)
        assert d["ci95_adjusted"] == pytest.approx([diff - half, diff + half], abs=1e-9)
        assert d["ci95_adjusted"][0] < 0 < d["ci95_adjusted"][1]
        assert d["verdict"].endswith("no significant difference (Welch t on runs, p = 0.0619, holm-adjusted)")
    assert compare.main([str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "CI (holm)" in table and f"[{100 * (0.066 - half):+.2f}, {100 * (0.066 + half):+.2f}]" in table


def _result(label: str, values: list[float], images: Optional[int]) -> comparison.GroupResult:
    floor = stats.sampling_floor(stats.mean(values), images) if images else None
    group = comparison.Group(label, {}, [])
    return comparison.GroupResult(group, [], values, stats.summarize(values, floor or 0.0), {}, None, floor)


@pytest.mark.parametrize("method", stats.ADJUSTMENTS)
def test_adjusted_intervals_agree_with_adjusted_verdicts_in_random_families(method: str) -> None:
    # Families of 1-6 comparisons with the baseline, 2-5 runs a group, differences around what Welch can just find,
    # floors from 100 to 10,000 images or none, some groups repeated (tied p): adjusted p < 0.05 exactly when the
    # adjusted interval excludes 0, and the verdict says better/worse exactly then.
    rng = random.Random(27)
    metric = METRICS["final_acc"]
    found, missed, holm_stops_after = 0, 0, 0
    for _ in range(1000):
        images = rng.choice([None, 100, 1000, 10_000])
        def draw(shift: float) -> list[float]:
            return [0.6 + shift + rng.gauss(0, rng.uniform(0.002, 0.03)) for _ in range(rng.randint(2, 5))]
        base = _result("base", draw(0.0), images)
        others: list[comparison.GroupResult] = []
        for i in range(rng.randint(1, 6)):
            shift = rng.choice([0, 0.01, 0.02, 0.04, 0.08])
            values = others[-1].values if others and rng.random() < 0.2 else draw(shift)
            others.append(_result(f"g{i}", values, images))
        differences = [comparison.difference(other, base, None) for other in others]
        comparison.decide(differences, metric, method)
        ps = [d.p for d in differences]
        for rank, d in enumerate(sorted(differences, key=lambda d: d.p or 0.0), start=1):
            assert d.p_adjusted is not None and d.ci_adjusted is not None and not d.ci_withheld
            significant = d.p_adjusted < comparison.SIGNIFICANCE
            assert (d.ci_adjusted[0] > 0 or d.ci_adjusted[1] < 0) == significant, (method, ps)
            assert (" better than " in d.verdict or " worse than " in d.verdict) == significant, d.verdict
            found, missed = found + significant, missed + (not significant)
            # The issue's case: a step after Holm stopped whose p is below its own step's alpha.
            holm_stops_after += not significant and (d.p or 1.0) < 0.05 / (len(ps) - rank + 1)
    assert found > 100 and missed > 100
    if method == "holm":
        assert holm_stops_after > 5


def test_a_p_on_the_threshold_never_gets_a_disagreeing_interval() -> None:
    # a = [0.5, 0.6], b = a + x: se = sqrt(0.005), df = 2, p = 0.05 at x = t(0.975, 2) * se = 0.304243. Around there
    # floating-point rounding decides both the p and the interval's end; they must agree, or no interval is shown.
    metric = METRICS["final_acc"]

    def decided(x: float) -> comparison.Difference:
        base, other = _result("a", [0.5, 0.6], None), _result("b", [0.5 + x, 0.6 + x], None)
        d = comparison.difference(other, base, None)
        comparison.decide([d], metric, "none")
        assert d.p_adjusted is not None
        return d

    # Where p crosses 0.05 in this SciPy's floats (t.ppf and t.sf agree there only to a few ulps, more in old
    # releases): bisected, then scanned ulp by ulp on both sides.
    low, high = 0.9 * stats.t_quantile(0.975, 2) * math.sqrt(0.005), 1.1 * stats.t_quantile(0.975, 2) * math.sqrt(0.005)
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if decided(middle).p_adjusted >= comparison.SIGNIFICANCE else (low, middle)
    seen = set()
    for step in range(-40, 41):
        d = decided(high + step * 2e-16)
        significant = d.p_adjusted < comparison.SIGNIFICANCE
        seen.add(significant)
        if d.ci_adjusted is None:
            assert d.ci_withheld
        else:
            assert (d.ci_adjusted[0] > 0 or d.ci_adjusted[1] < 0) == significant
    assert seen == {True, False}


def test_zero_spread_is_judged_by_the_test_set_floor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 27: two runs at 10 % and two at 11 % on 100 test images (one image apart) said "better, p = 0" and
    # --plan 2 runs. Each score is a sample of 100 images (test_stats.test_welch_with_a_floor_by_hand: p = 0.775).
    for seed in (0, 1):
        make_run(tmp_path, f"a{seed}", [0.10], seed=seed)
        make_run(tmp_path, f"b{seed}", [0.11], "optim.lr=0.1", seed=seed)
    assert compare.main([str(tmp_path), "--json", "--plan", "1"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    (d,) = out["differences"]
    assert d["test"] == "welch" and d["p"] == pytest.approx(0.775, abs=1e-3) and d["ci95"][0] < 0 < d["ci95"][1]
    assert "no significant difference" in d["verdict"]
    assert [g["floor"] for g in out["groups"]] == pytest.approx([0.03, 0.0312890], abs=1e-7)
    low, high = out["groups"][0]["ci95"]  # the group's interval rests on the floor too
    assert [g["std"] for g in out["groups"]] == [0.0, 0.0] and low < 0.1 < high
    # The plan: pooled over the floors, sqrt((0.0009 + 0.000979) / 2) = 0.0306513; 1 point is d = 0.326 (not 2 runs).
    pooled = math.sqrt((0.1 * 0.9 / 100 + 0.11 * 0.89 / 100) / 2)
    assert out["plan"]["pooled_std"] == pytest.approx(pooled) and out["plan"]["seeds_per_group"] == stats.seeds_needed(
        0.01, pooled) > 100
    assert ("cifarlab: note: runs spread less than test-set sampling alone makes an accuracy vary, sqrt(p (1 - p) / "
            "images); their intervals and tests use that instead: optim.lr=0.05 (0.00 < 3.00 points); optim.lr=0.1 "
            "(0.00 < 3.13 points)") in captured.err


def test_zero_spread_without_a_floor_is_no_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A test loss is no proportion: runs that repeat it exactly leave nothing to judge a difference by.
    for seed in (0, 1):
        make_run(tmp_path, f"a{seed}", [0.5], seed=seed, losses=[1.25])
        make_run(tmp_path, f"b{seed}", [0.5], "optim.lr=0.1", seed=seed, losses=[1.5])
    out = run_json(capsys, str(tmp_path), "--metric", "test_loss")
    (d,) = out["differences"]
    assert d["p"] is None and d["test"] is None and d["ci95"] is None and d["p_adjusted"] is None
    assert d["verdict"] == ("optim.lr=0.1 vs optim.lr=0.05: runs repeat exactly: no spread to judge a difference by "
                            "(no test)")
    assert out["groups"][0]["ci95"] is None and out["groups"][0]["floor"] is None
    assert compare.main([str(tmp_path), "--metric", "test_loss"]) == 0
    assert "no spread" in capsys.readouterr().out
    assert "the runs of every group repeat exactly" in usage_error(capsys, str(tmp_path), "--metric", "test_loss",
                                                                   "--plan", "0.1")


def test_spread_explained_by_the_test_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # lr 0.05: mean 0.6, std 0.1 on 100 images: test set alone sqrt(0.6 * 0.4 / 100) = 0.04899, variance 0.0024,
    # 24 % of 0.01; seed luck sqrt(0.01 - 0.0024) = 0.08718.
    out = run_json(capsys, str(lr_sweep(tmp_path / "sweep")))
    spread = out["groups"][0]["spread"]
    assert spread["images"] == 100 and spread["test_set_std"] == pytest.approx(math.sqrt(0.0024))
    assert spread["test_set_share"] == pytest.approx(0.24) and spread["seed_std"] == pytest.approx(math.sqrt(0.0076))
    assert compare.main([str(tmp_path / "sweep")]) == 0
    table = capsys.readouterr().out
    assert "test-set sampling alone vs seed luck" in table and "24 %" in table and "8.72" in table
    assert run_json(capsys, str(tmp_path / "sweep"), "--metric", "test_loss")["groups"][0]["spread"] is None


def test_plan_seeds_and_detectable_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Pooled std 0.1 (both groups), 10 points to find: d = 1, Cohen's table: 17 a group. The current 3 v 3:
    # the smallest difference with 80 % power, noncentral t, se sqrt(0.02 / 3), df 4.
    lr_sweep(tmp_path / "sweep")
    plan = run_json(capsys, str(tmp_path / "sweep"), "--plan", "10")["plan"]
    assert plan["delta"] == pytest.approx(0.1) and plan["pooled_std"] == pytest.approx(0.1)
    assert plan["seeds_per_group"] == 17 and plan["alpha"] == pytest.approx(0.05) and plan["power"] == 0.8
    smallest = stats.detectable(math.sqrt(0.02 / 3), 4.0)
    assert plan["detectable"] == {"optim.lr=0.1": pytest.approx(smallest)} and 0.2 < smallest < 0.4
    assert compare.main([str(tmp_path / "sweep"), "--plan", "10"]) == 0
    text = capsys.readouterr().out
    assert "10.00 points with 80 % power" in text and "17 runs (seeds) per group" in text
    assert f"optim.lr=0.1: {100 * smallest:.2f} points" in text
    three = run_json(capsys, str(three_groups(tmp_path / "three")), "--plan", "1")["plan"]
    assert three["alpha"] == pytest.approx(0.025)  # two comparisons, Holm: planned at 0.05 / 2


def test_plan_needs_a_spread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", [0.6])
    make_run(tmp_path, "b", [0.7], "optim.lr=0.1")
    assert "--plan: no group has 2 or more runs" in usage_error(capsys, str(tmp_path), "--plan", "1")
    assert "must be positive" in usage_error(capsys, str(tmp_path), "--plan", "-1")


def test_verdicts_name_both_groups_in_80_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for lr in ("0.05", "0.02"):
        for seed in range(2):
            make_run(tmp_path, f"lr{lr}-s{seed}", [0.6 + seed / 100], f"optim.lr={lr}", "optim.weight_decay=0.0005",
                     "train.epochs=20", seed=seed)
    report = comparison.compare(results.read_runs([str(tmp_path)]), ["optim.lr", "optim.weight_decay", "train.epochs"],
                                METRICS["final_acc"], None)
    rendering.render(report, False, 80)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert ("optim.lr=0.05, optim.weight_decay=0.0005, train.epochs=20 vs optim.lr=0.02, optim.weight_decay=0.0005, "
            "train.epochs=20: no significant difference") in " ".join(line.strip() for line in out.splitlines())


# --- environment ----------------------------------------------------------------------------------------


def test_one_warning_per_differing_environment_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", [0.6], environment={**ENV, "host": "node01"})
    make_run(tmp_path, "b", [0.7], "optim.lr=0.1",
             environment={**ENV, "torch": "2.5.1", "host": "node17",
                          "git": {"commit": "fedcba9876543210", "dirty": True}})
    assert compare.main([str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    warnings = json.loads(captured.out)["warnings"]
    assert warnings == [
        "runs differ in environment torch: optim.lr=0.05: 2.4.0; optim.lr=0.1: 2.5.1 (split them with --by env.torch)",
        "runs differ in environment git commit: optim.lr=0.05: 0123456789ab; optim.lr=0.1: fedcba987654+dirty "
        "(split them with --by env.git)"]  # node01 and node17 are one host class
    assert captured.err.count("cifarlab: warning: runs differ in environment") == 2


def test_environment_differences_inside_a_group_and_grouped_by(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", [0.6], seed=0, environment={**ENV, "processes": 1, "gpus": ["H100"]})
    make_run(tmp_path, "b", [0.7], seed=1, environment={**ENV, "processes": 2, "gpus": [{"name": "A100"}]})
    make_run(tmp_path, "c", [0.7], seed=2)  # an older run: its missing fields are not a difference
    (tmp_path / "c" / "environment.json").unlink()
    assert run_json(capsys, str(tmp_path))["warnings"] == [
        "runs differ in environment GPUs: all: A100, H100 (split them with --by env.gpus)",
        "runs differ in environment processes: all: 1, 2 (split them with --by env.processes)"]
    by = run_json(capsys, str(tmp_path), "--by", "env.processes")
    assert [g["label"] for g in by["groups"]] == ["env.processes=null", "env.processes=1", "env.processes=2"]
    assert by["warnings"] == ["runs differ in environment GPUs: env.processes=1: H100; env.processes=2: A100 "
                              "(split them with --by env.gpus)"]


# --- output files and errors ----------------------------------------------------------------------------


# --- runs a search chose (issue 30) ----------------------------------------------------------------------------


def chosen_runs(root: Path, metric: Optional[str]) -> Path:
    """A search folder as compare sees one (its journal, search.yaml saying it chose on ``metric``; None: a search
    from before search.yaml), two trials and its confirmation, every run with a validation split: its folder."""
    folder = root / "search"
    folder.mkdir(parents=True)
    (folder / "search.journal").touch()
    if metric is not None:
        direction = "maximize" if METRICS[metric].higher_is_better else "minimize"
        (folder / "search.yaml").write_text(f"space: {{optim.lr: {{uniform: [0.01, 0.1]}}}}\nmetric: {metric}\n"
                                            f"direction: {direction}\n")
    for number, lr in enumerate(("0.05", "0.1")):
        split_run(folder, f"trial-000{number}", [0.5 + number / 10], 0.5, f"optim.lr={lr}")
        for seed in (1, 2):
            split_run(folder / "confirm", f"lr={lr}-seed={seed}", [0.5 + seed / 100], 0.4 + seed / 100,
                      f"optim.lr={lr}", seed=seed)
    return folder


def notes(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert compare.main(list(args)) == 0
    return [line for line in capsys.readouterr().err.splitlines() if "chosen by the search" in line]


def test_runs_a_search_chose_on_the_test_set_are_noted_when_judged_on_it(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = chosen_runs(tmp_path, "final_acc")
    note = (f"cifarlab: note: these runs were chosen by the search {folder} on the test set (final_acc), and "
            f"final_acc judges them on it too: the winner's figure is optimistic (chosen on the same images); hold "
            f"out a validation split (data.val_size) for the search to choose on, and judge on the test set")
    assert notes(capsys, str(folder / "confirm")) == [note]
    assert notes(capsys, str(folder)) == [note]  # the search's own table of its trials
    assert notes(capsys, str(folder / "confirm" / "lr=0.1-seed=1"), str(folder / "confirm" / "lr=0.1-seed=2"),
                 str(folder / "confirm" / "lr=0.05-seed=1")) == [note]
    assert notes(capsys, str(folder / "confirm"), "--metric", "test_loss") == [note.replace(
        "and final_acc judges", "and test_loss judges")]
    assert note[len("cifarlab: note: "):] in run_json(capsys, str(folder / "confirm"))["notes"]
    assert notes(capsys, str(folder / "confirm"), "--metric", "val_acc") == []
    assert notes(capsys, str(folder / "confirm"), "--metric", "images_per_s") == []
    (folder / "search.yaml").unlink()  # a search from before search.yaml: it could choose on the test set only
    assert notes(capsys, str(folder / "confirm")) == [note]
    (folder / "search.yaml").write_text("metric: [final_acc]\n")  # not what a search writes: no note, a table
    assert notes(capsys, str(folder / "confirm")) == []


def test_runs_a_search_chose_on_the_validation_split_are_noted_only_when_judged_on_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = chosen_runs(tmp_path, "val_acc")
    assert notes(capsys, str(folder / "confirm")) == []  # judged on the test set: what it is for
    assert notes(capsys, str(folder), "--metric", "final_acc") == []
    note = (f"cifarlab: note: these runs were chosen by the search {folder} on the validation split (val_acc), and "
            f"best_val_acc judges them on it too: the winner's figure is optimistic (chosen on the same images); "
            f"judge them on the test set (--metric final_acc)")
    assert notes(capsys, str(folder / "confirm"), "--metric", "best_val_acc") == [note]
    assert notes(capsys, str(folder)) == [note.replace("best_val_acc judges", "val_acc judges")]
    plain = tmp_path / "sweep"
    for seed in (0, 1):
        make_run(plain, f"s{seed}", [0.5], seed=seed)
    assert notes(capsys, str(plain)) == []


def test_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lr_sweep(tmp_path / "sweep")
    picture = tmp_path / "compare.png"
    assert compare.main([str(tmp_path / "sweep"), "--png", str(picture), "--per-class"]) == 0
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.width > 1200 and image.height > 300
    assert "picture written to" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "start"), [("compare.svg", (b"<?xml", b"<svg")), ("compare.pdf", (b"%PDF",)),
                                             ("compare.PNG", (b"\x89PNG\r\n\x1a\n",))])
def test_the_names_ending_picks_the_pictures_format(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                                     start: tuple[bytes, ...]) -> None:
    lr_sweep(tmp_path / "sweep")
    assert compare.main([str(tmp_path / "sweep"), "--png", str(tmp_path / name), "--per-class"]) == 0
    assert (tmp_path / name).read_bytes().startswith(start)
    assert capsys.readouterr().err.endswith(f"picture written to {tmp_path / name}\n")
    assert [path.name for path in tmp_path.iterdir() if path.is_file()] == [name]  # no temporary file left


def test_an_unknown_ending_is_refused_in_one_line_naming_the_formats(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    lr_sweep(tmp_path / "sweep")
    assert usage_error(capsys, str(tmp_path / "sweep"), "--png", str(tmp_path / "x.gif")) == (
        f"cifarlab: error: --png {tmp_path / 'x.gif'}: the name's ending picks the picture's format; give a file name "
        f"ending in .png, .svg or .pdf")
    assert not (tmp_path / "x.gif").exists()


def test_a_link_where_the_picture_goes_is_refused_and_its_target_left_alone(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    lr_sweep(tmp_path / "sweep")
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "compare.png").symlink_to(tmp_path / "notes.txt")
    assert "compare.png is a symbolic link" in usage_error(capsys, str(tmp_path / "sweep"), "--png",
                                                           str(tmp_path / "compare.png"))
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and (tmp_path / "compare.png").is_symlink()


@pytest.mark.parametrize(("args", "message"), [
    (["--metric", "accuracy"], "--metric accuracy: unknown; one of final_acc, best_acc"),
    (["--by", "optim.learning_rate"], "--by optim.learning_rate: not a config key"),
    (["--by", "env.gpu_names"], "--by env.gpu_names: no run's environment.json has it"),
    (["--baseline", "nope"], "--baseline nope: no such group"),
    (["--png", "no/such/folder/x.png"], "folder no/such/folder does not exist"),
])
def test_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    lr_sweep(tmp_path / "sweep")
    # --png first: the bad option given later wins, and nothing may be written
    assert message in usage_error(capsys, str(tmp_path / "sweep"), "--png", str(tmp_path / "out.png"), *args)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("view", ["runs", "search"])
@pytest.mark.parametrize(("name", "message"), [("out.txt", "give a file name ending in .png"),
                                               ("out", "give a file name ending in .png"),
                                               ("out.gif", "give a file name ending in .png, .svg or .pdf"),
                                               ("folder.png", "is a folder; give a file name ending in .png")])
def test_a_png_it_cannot_write_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          view: str, name: str, message: str) -> None:
    if view == "runs":
        lr_sweep(tmp_path / "sweep")
    else:  # a search's folder, as compare sees one: its journal and trial-NNNN runs
        for number, final in enumerate([0.5, 0.6]):
            make_run(tmp_path / "sweep", f"trial-000{number}", [final], f"optim.lr=0.0{number + 1}")
        (tmp_path / "sweep" / "search.journal").touch()
    (tmp_path / "folder.png").mkdir()
    before = sorted((str(path), path.stat().st_mtime_ns) for path in tmp_path.rglob("*"))
    assert message in usage_error(capsys, str(tmp_path / "sweep"), "--png", str(tmp_path / name))
    assert sorted((str(path), path.stat().st_mtime_ns) for path in tmp_path.rglob("*")) == before


def test_paths_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert "holds no run directory" in usage_error(capsys, str(tmp_path / "empty"))
    assert "no such file or directory" in usage_error(capsys, str(tmp_path / "missing"))
    make_run(tmp_path, "running", [0.5], finished=False)
    assert "none of the 1 run(s) has finished" in usage_error(capsys, str(tmp_path / "running"))


def test_a_suggestion_for_a_mistyped_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, "a", [0.5])
    assert "did you mean optim.lr?" in usage_error(capsys, str(tmp_path), "--by", "optim.lrr")


def _shown(keys: Sequence[str]) -> list[str]:
    return [key + "*" if key.endswith(".") else key for key in keys]


def test_the_docs_name_every_ignored_key_and_metric() -> None:
    docs = (REPO / "docs" / "compare.md").read_text()
    assert " ".join(_shown(comparison.IGNORED)) in " ".join(docs.split())
    assert all(f"`{name}`" in docs for name in METRICS)


def test_compares_help_names_every_ignored_key() -> None:
    assert ", ".join(_shown(comparison.IGNORED)) in " ".join((compare.__doc__ or "").split())


@pytest.mark.parametrize("doc", ["README.md", "docs/runs.md", "docs/sweeps.md"])
def test_the_docs_name_exactly_the_volatile_keys(doc: str) -> None:
    # Every list of 5 or more backticked keys that names train.run_name is identity.VOLATILE, no key more or less, so
    # the docs cannot drift from the one list again (compare's ignore list had).
    key = r"`[a-z_]+\.[a-z_.*]+`"
    text = (REPO / doc).read_text()
    lists = [re.findall(r"`([^`]+)`", match.group(0))
             for match in re.finditer(rf"{key}(?:(?:,\s+and\s+|,\s+|\s+and\s+){key})+", text)]
    named = [keys for keys in lists if "train.run_name" in keys and len(keys) >= 5]
    assert named and all(sorted(keys) == sorted(_shown(VOLATILE)) for keys in named), named


def test_compare_on_runs_imports_neither_optuna_nor_what_runs_trials(tmp_path: Path) -> None:
    """compare judges finished runs with the analysis wing alone: a run or grid folder loads no Optuna (the
    [search] extra) and nothing of cifarlab.experiments (tests/test_architecture.py keeps analysis/ below it); and,
    without --png, no matplotlib (it draws the picture only)."""
    for seed, lr in ((0, "0.01"), (1, "0.01"), (0, "0.02"), (1, "0.02")):
        make_run(tmp_path / "sweep", f"lr{lr}-s{seed}", [0.5 + seed / 100], f"optim.lr={lr}", seed=seed)
    probe = ("import sys; from cifarlab.compare import main; code = main(sys.argv[1:]); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'matplotlib') or "
             "m.startswith('cifarlab.experiments'))); sys.exit(code)")
    for folder, options in ((tmp_path / "sweep", ["--json"]), (tmp_path / "sweep" / "lr0.01-s0", ["--json"]),
                            (tmp_path / "sweep", ["--per-class"])):
        result = subprocess.run([sys.executable, "-c", probe, str(folder), *options], capture_output=True, text=True,
                                timeout=120, cwd=REPO)
        assert (result.returncode, result.stdout.splitlines()[-1]) == (0, "[]"), result.stderr
