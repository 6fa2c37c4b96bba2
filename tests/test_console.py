"""What a person sees: one progress bar and line per epoch and one table at the end in a 2-process run, plain lines
off a terminal, nothing but warnings with --quiet; tables that stay readable at 100 classes."""

from __future__ import annotations

import math
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from cifarlab.data.classes import CIFAR100_CLASSES, CIFAR100_SUPERCLASSES, fake_classes
from cifarlab.report.console import Console, accuracy_summary, report_rows
from cifarlab.report.metrics import EvalResult

from conftest import check, cli_env, in_process, launch_command, run_cli, smoke


def _result(classes: tuple[str, ...], right: dict[int, int], images: int = 4, seed: int = 0) -> EvalResult:
    """``images`` test images per class, ``right[label]`` of them (default 0) classified correctly, the others
    as the next class; random logits otherwise."""
    labels = torch.arange(len(classes)).repeat_interleave(images)
    correct = torch.tensor([i % images < right.get(int(label), 0) for i, label in enumerate(labels)])
    preds = torch.where(correct, labels, (labels + 1) % len(classes))
    logits = torch.randn(len(labels), len(classes), generator=torch.Generator().manual_seed(seed))
    logits[torch.arange(len(labels)), preds] = 10.0  # the prediction is the highest logit
    return EvalResult.from_predictions(preds, labels, torch.ones(len(labels)), classes, logits)


@pytest.mark.unit
def test_up_to_20_classes_every_class_gets_a_row_with_top5(capsys: pytest.CaptureFixture[str]) -> None:
    classes = fake_classes(10)
    first, second = _result(classes, {0: 1}), _result(classes, {0: 3, 1: 2})
    Console(True).eval_table("epoch 2", second, first)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "accuracy" in line and "class" in line)
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == ["class", "accuracy", "top-5", "change",
                                                                        "images"]
    assert all(name in out for name in classes)
    airplane = next(line for line in out.splitlines() if "airplane" in line)
    assert [cell.strip() for cell in airplane.strip("│").split("│")][1:] == ["75.0 %", "100.0 %", "+50.0", "4"]
    assert accuracy_summary(second).startswith("test accuracy 12.50 % (40 images), top-5 ")
    five = _result(fake_classes(5), {0: 4})
    assert five.top5 is None and "top-5" not in accuracy_summary(five)  # always 100 % with 5 classes


@pytest.mark.unit
def test_cifar100_is_summarised_by_superclass(capsys: pytest.CaptureFixture[str]) -> None:
    people = [CIFAR100_CLASSES.index(name) for name in CIFAR100_SUPERCLASSES["people"]]
    first = _result(CIFAR100_CLASSES, {people[0]: 2})
    second = _result(CIFAR100_CLASSES, {people[0]: 4, people[1]: 4})
    kind, rows, caption = report_rows(second, first)
    assert kind == "superclass" and [row.name for row in rows] == list(CIFAR100_SUPERCLASSES)
    row = rows[list(CIFAR100_SUPERCLASSES).index("people")]
    assert (row.accuracy, row.images, row.change) == (8 / 20, 20, pytest.approx(6 / 20))
    # Misclassified as the next label (baby -> bear, ..., woman -> worm): always another superclass.
    assert row.in_group == pytest.approx(8 / 20)
    assert row.top5 == pytest.approx(sum(second.per_class_top5[n] for n in CIFAR100_SUPERCLASSES["people"]) / 5)
    Console(True).eval_table("t", second, first)
    out = capsys.readouterr().out
    assert sum(line.startswith("│") for line in out.splitlines()) == 20  # 20 rows, not 100
    assert "in superclass" in out and "apple" not in out and caption is not None and caption in out


@pytest.mark.unit
def test_many_classes_without_superclasses_show_the_best_and_worst(capsys: pytest.CaptureFixture[str]) -> None:
    classes = fake_classes(30)
    result = _result(classes, {3: 4, 7: 3, 11: 2, 12: 1, 20: 1, 21: 1})
    kind, rows, caption = report_rows(result, _result(classes, {}))
    assert kind == "class" and caption == "the 5 best and 5 worst of 30 classes; every class: test/acc/<class>"
    assert [row.name for row in rows[:3]] == ["class03", "class07", "class11"]
    assert [row.accuracy for row in rows] == [1.0, 0.75, 0.5, 0.25, 0.25, 0, 0, 0, 0, 0]
    assert rows[5].section and not any(row.section for row in rows[:5] + rows[6:])
    assert rows[0].change == 1.0 and not math.isnan(rows[-1].change)
    Console(True).eval_table("t", result)
    out = capsys.readouterr().out
    assert "class03" in out and "class29" in out and sum(line.startswith("│") for line in out.splitlines()) == 10
    Console(True).confusion_table(result)
    pairs = capsys.readouterr().out
    assert "most confused pairs of 30 classes" in pairs and "class00" in pairs and "class01" in pairs


@pytest.mark.unit
@pytest.mark.parametrize("every_epoch", [False, True])
def test_each_epoch_is_one_line_and_the_per_class_table_comes_at_the_end(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], every_epoch: bool) -> None:
    """Each figure once an epoch, on one line; the per-class table (with the change since the evaluation before)
    once, at the end, unless logging.per_class_every_epoch asks for it after every evaluation."""
    from accelerate import Accelerator

    from cifarlab.report.metrics import EpochStats
    from cifarlab.run.recorder import Recorder
    from cifarlab.run.rundir import RunDir
    from cifarlab.run.state import Pace, TrainState

    recorder = Recorder(Accelerator(cpu=True), RunDir(tmp_path), Console(True), Pace(16, 4), 2, 50,
                        per_class_every_epoch=every_epoch)
    classes = fake_classes(10)
    first, second = _result(classes, {0: 1}), _result(classes, {0: 3, 1: 2})
    for epoch, result in enumerate((first, second), start=1):
        recorder.evaluation(TrainState(epoch=epoch, global_step=4 * epoch), {"test": result},
                            EpochStats(2.0, 4, 1.0, 64.0))
    recorder.final_table(second)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "epoch 2/2: train loss" in line]
    assert len(lines) == 1 and lines[0].count(accuracy_summary(second)) == 1 and out.count("test accuracy 12.50") == 1
    assert out.count("┏") == (2 if every_epoch else 1) and out.count("change") == 1
    assert ("test accuracy per class at the end of the run" in out) is not every_epoch


@pytest.mark.integration
def test_two_process_run_prints_once_in_plain_lines_off_a_terminal(tmp_path: Path) -> None:
    result = check(run_cli(smoke(tmp_path, "plain"), tmp_path, processes=2))
    out = result.stdout
    assert out.count("resolved config") == 1 and out.count("done in") == 1
    assert out.count("┏") == 1  # one per-class table, at the end, from the main process only
    assert out.count("change") == 1  # it shows the change since the evaluation before
    assert all(sum(f"epoch {epoch}/2: train loss" in line and line.count("test accuracy") == 1
                   for line in out.splitlines()) == 1 for epoch in (1, 2))
    assert "epoch 1 step 4/8 loss" in out  # periodic plain lines instead of a bar
    assert "\r" not in out and "\x1b[" not in out  # no control characters in logs


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a pseudo-terminal")
def test_a_terminal_gets_a_progress_bar_per_epoch(tmp_path: Path) -> None:
    command = shlex.join([*launch_command(2), *smoke(tmp_path, "tty")])
    result = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=tmp_path, env=cli_env(COLUMNS="150"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    out = result.stdout
    assert "8/8" in out and "epoch 1/2" in out and "epoch 2/2" in out  # the bars, run to the end
    assert "epoch 1 step 4/8 loss" not in out  # the bar replaces the plain lines
    assert out.count("┏") == 1 and out.count("done in") == 1


@pytest.mark.integration
def test_quiet_prints_nothing_but_keeps_errors(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # A whole run in this process, its output read at the file descriptors (what C code writes too). A process's
    # start-up (imports) printing nothing under --quiet: test_startup's training processes.
    quiet = check(in_process([*smoke(tmp_path, "quiet"), "--quiet"], capfd))
    assert quiet.stdout == ""
    assert (tmp_path / "runs" / "quiet" / "model.safetensors").is_file()
    failing = in_process([*smoke(tmp_path, "quiet"), "--quiet"], capfd)  # the run exists already
    assert failing.returncode == 2 and "already holds a run" in failing.stderr
