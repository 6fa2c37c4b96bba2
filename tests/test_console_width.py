"""Each command's tables in a real 80-column terminal (a pty, TIOCSWINSZ and COLUMNS=80): no line is wider, and every
class and group name is printed whole on one line (nothing cut with "…", nothing wrapped inside a name); verdicts
wrap at spaces, never inside "p = 0.684". Stdout is the pty; stderr (one-line notes and warnings) a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import yaml
from test_compare import make_run
from test_search import finished_run
from test_sweep import fake_run, spec, write

from cifarlab.analysis.sweepdir import trial_name
from cifarlab.config import load_config
from cifarlab.experiments.spec import read_sweep
from cifarlab.report.console import wrapped
from cifarlab.run.rundir import RunDir

from conftest import CONFIGS, FAKE_TRAINER, cli_env

COLUMNS = 80
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def in_terminal(module: str, *args: str, cwd: Path) -> list[str]:
    """``python -m MODULE ARGS`` with its stdout on an 80-column pty: its lines, control sequences removed."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
    env = cli_env(COLUMNS=str(COLUMNS), LINES="24", TERM="xterm", NO_COLOR="1")
    process = subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL, stdout=child,
                               stderr=subprocess.PIPE, cwd=cwd, env=env)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child has gone: Linux answers EIO
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""
    text = _ESCAPE.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")
    return text.splitlines()


def fits(lines: list[str], names: list[str]) -> None:
    """No line wider than the terminal, nothing cut, and each name whole on some line."""
    wide = [line for line in lines if len(line.rstrip()) > COLUMNS]
    assert not wide, "\n".join(wide)
    assert not any("…" in line for line in lines), "\n".join(lines)
    for name in names:
        assert any(re.search(rf"(?<![\w.=]){re.escape(name)}(?![\w.=])", line) for line in lines), (name, lines)


@pytest.mark.integration
def test_compare_numbers_groups_that_do_not_fit_and_wraps_verdicts_at_spaces(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    groups = [(), ("optim.lr=0.02", "optim.label_smoothing=0.1"), ("optim.weight_decay=0.001", "optim.momentum=0.8")]
    for g, overrides in enumerate(groups):
        for seed in range(3):
            make_run(runs, f"g{g}-{seed}", [0.5, 0.6 + 0.01 * g + 0.013 * seed], *overrides, seed=seed,
                     per_class={name: 0.5 for name in CLASSES[:2]})
    lines = in_terminal("cifarlab.compare", str(runs), "--per-class", cwd=tmp_path)
    fits(lines, [override for overrides in groups for override in overrides] + CLASSES[:2])
    assert "groups by number:" in lines and "difference from #1 (points); Welch t" in "\n".join(lines)
    verdicts = lines[lines.index("verdicts:") + 1:]
    assert any(re.search(r"p = [\d.]+", line) for line in verdicts)
    assert not any(re.search(r"p =?$|^\s*=? ?[\d.]+,", line) for line in verdicts)


@pytest.mark.integration
def test_compare_splits_a_per_class_table_of_many_groups_into_tables_that_fit(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for g in range(9):
        for seed in range(2):
            make_run(runs, f"g{g}-{seed}", [0.5, 0.6 + 0.01 * g + 0.013 * seed], f"optim.lr=0.0{g + 1}", seed=seed,
                     per_class={name: 0.5 + 0.01 * g for name in CLASSES})
    lines = in_terminal("cifarlab.compare", str(runs), "--per-class", cwd=tmp_path)
    fits(lines, CLASSES + [f"optim.lr=0.0{g + 1}" for g in range(9)])
    headers = [re.findall(r"#\d", line) for line in lines if line.startswith("┃ class ")]
    assert len(headers) == 2 and all(header[0] == "#1" for header in headers)  # the baseline beside each part
    assert sorted({number for header in headers for number in header}) == [f"#{g}" for g in range(1, 10)]
    assert any(re.search(r"│ airplane +│ +50\.0 │ +51\.0 \(\+1\.0\) │", line) for line in lines), lines


@pytest.mark.integration
def test_summary_moves_the_formulas_to_a_table_of_their_own(tmp_path: Path) -> None:
    lines = in_terminal("cifarlab.summary", "--config", str(CONFIGS / "resnet18.yaml"), cwd=tmp_path)
    fits(lines, ["layers.6.shortcut.0", "AdaptiveAvgPool2d", "floor((32 - 3 + 2*1)/2) + 1 = 16"])
    assert any("output size: (W - F + 2P)/S + 1 of the layers above" in line for line in lines)


@pytest.mark.integration
def test_sweep_list_prints_aligned_columns_on_a_terminal_and_tabs_to_a_pipe(tmp_path: Path) -> None:
    file = write(tmp_path, spec(grid={"optim.lr": [0.01, 0.05]}, seeds=[0, 1, 2]))
    runs = f"train.output_dir={tmp_path / 'runs'}"
    sweep = read_sweep(str(file), [runs])
    fake_run(sweep, 0, finished=True)
    fake_run(sweep, 2, finished=False)
    lines = in_terminal("cifarlab.sweep", str(file), "--list", runs, cwd=tmp_path)
    fits(lines, [trial.name for trial in sweep.trials] + ["interrupted, no checkpoint"])
    assert not any("\t" in line for line in lines)
    starts = {line.index(trial.name) for trial in sweep.trials for line in lines if f" {trial.name} " in line}
    assert len(starts) == 1  # one column
    piped = subprocess.run([sys.executable, "-m", "cifarlab.sweep", str(file), "--list", runs], cwd=tmp_path,
                           env=cli_env(), capture_output=True, text=True, check=True).stdout.splitlines()
    assert piped[0] == "index\tstate\tname\toverrides" and piped[1].startswith("0\tfinished\t")


SEARCHED = {"optim.lr": {"log_uniform": [0.001, 0.5]}, "optim.weight_decay": {"log_uniform": [1e-6, 1e-2]},
            "data.augment": {"choice": ["none", "flip_crop"]}, "optim.momentum": {"uniform": [0.5, 0.99]}}
TRIALS = [(0.4224, 0.007579, "flip_crop", 0.5198, 0.61), (0.3096, 0.002506, "none", 0.652, 0.55),
          (0.1588, 0.006405, "none", 0.9736, 0.48), (0.2435, 0.009182, "flip_crop", 0.9742, 0.36)]


def search_folder(tmp_path: Path) -> Path:
    """A search of four keys whose trials have finished (no Optuna needed: compare reads the run directories)."""
    folder = tmp_path / "runs" / "s"
    folder.mkdir(parents=True)
    (folder / "search.journal").touch()
    (folder / "search.yaml").write_text(yaml.safe_dump({"space": SEARCHED, "metric": "final_acc",
                                                        "direction": "maximize"}, sort_keys=False))
    for number, (*values, accuracy) in enumerate(TRIALS):
        settings = [f"{key}={value}" for key, value in zip(SEARCHED, values)]
        finished_run(RunDir(folder / trial_name(number)), load_config(str(CONFIGS / "smoke.yaml"), settings), accuracy)
    return folder


@pytest.mark.integration
def test_a_search_numbers_its_searched_keys_where_they_do_not_fit_and_wraps_what_it_teaches(tmp_path: Path) -> None:
    search_folder(tmp_path)
    lines = in_terminal("cifarlab.compare", "runs/s", cwd=tmp_path)
    fits(lines, [*SEARCHED, "trial-0000", "0.007579", "flip_crop", "importance"])
    assert lines[:5] == ["searched keys by number:", "  k1 optim.lr", "  k2 optim.weight_decay", "  k3 data.augment",
                         "  k4 optim.momentum"]
    assert any(re.search(r"│ +1 │ trial-0000 │ +61\.00 │ +0\.4224 │ +0\.007579 │ +flip_crop │ +0\.5198 │", line)
               for line in lines), lines


@pytest.mark.unit
def test_a_search_too_wide_for_numbered_columns_lists_a_line_a_trial(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from cifarlab.analysis import searchview

    folder = search_folder(tmp_path)
    goal = searchview.objective(folder, None)
    trials, keys = searchview.read_trials(folder, goal)
    searchview.render(folder, trials, keys, goal, 50)
    lines = capsys.readouterr().out.splitlines()
    trial_lines = lines[:lines.index(next(line for line in lines if line.startswith("search ")))]
    assert all(len(line) <= 50 for line in trial_lines), lines
    assert lines[:5] == ["final test accuracy (%): the best completed trials", "of 4 (highest first)",
                         "  1. trial-0000 61.00: optim.lr=0.4224", "      optim.weight_decay=0.007579",
                         "      data.augment=flip_crop optim.momentum=0.5198"]


@pytest.mark.unit
def test_a_search_with_no_completed_trial_says_so_not_an_empty_table(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from cifarlab.analysis import searchview

    folder = search_folder(tmp_path)
    for number in range(len(TRIALS)):  # each trial still training: no weights yet
        RunDir(folder / trial_name(number)).weights.unlink()
    goal = searchview.objective(folder, None)
    trials, keys = searchview.read_trials(folder, goal)
    searchview.render(folder, trials, keys, goal, COLUMNS)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["final test accuracy (%): no trial has completed yet",
                         f"search {folder}: 4 trials: 0 complete, 0 pruned, 4 unfinished"]


@pytest.mark.integration
def test_evaluate_numbers_the_confusion_matrix_columns(smoke_reference: Path) -> None:
    # Run where the run directory is, as people do: log lines name paths as given, and a path is not a table.
    lines = in_terminal("cifarlab.evaluate", "--checkpoint", smoke_reference.name, cwd=smoke_reference.parent)
    fits(lines, CLASSES)
    assert any(line.strip().startswith("true class") for line in lines)
    assert sum(bool(re.match(rf"\s*{number} {name}\s", line)) for number, name in enumerate(CLASSES)
               for line in lines) == len(CLASSES)


@pytest.mark.integration
def test_train_wraps_its_log_lines_at_spaces_and_fits_its_table(tmp_path: Path) -> None:
    """The trainer's lines (config, run directory, each epoch, done) wrap at spaces under the message, a figure with
    its unit; the per-class table at the end fits; piped, each message stays one line (test_console)."""
    lines = in_terminal("cifarlab.train", "--config", str(CONFIGS / "smoke.yaml"), "train.output_dir=runs",
                        "train.run_name=t", "train.epochs=1", "logging.wandb.mode=disabled", "data.loader=tensor",
                        cwd=tmp_path)
    fits(lines, [*CLASSES, "data.loader=tensor", "logging.wandb.mode=disabled", "runs/t/model.safetensors"])
    continued = [line for line in lines if line.startswith(" " * 11) and line.strip()]
    assert continued and not any(line.strip().startswith("%") for line in continued)


@pytest.mark.integration
def test_a_sweep_wraps_its_progress_lines_at_spaces(tmp_path: Path) -> None:
    """A sweep's own lines (trials started and finished, the tally) on a terminal: wrapped at spaces, indented."""
    file = write(tmp_path, spec(grid={"optim.lr": [0.01, 0.05]}, seeds=[0]))
    lines = in_terminal("cifarlab.sweep", str(file), "--trainer", FAKE_TRAINER, "train.output_dir=runs", cwd=tmp_path)
    fits(lines, ["lr=0.01-seed=0", "lr=0.05-seed=0"])
    assert any(line.startswith("    ") for line in lines)  # a long line went on under its prefix


@pytest.mark.integration
def test_predict_fits(smoke_reference: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32), "white").save(tmp_path / "white.png")
    lines = in_terminal("cifarlab.predict", "--checkpoint", str(smoke_reference), "white.png", cwd=tmp_path)
    fits(lines, ["white.png"])


@pytest.mark.unit
def test_verdicts_wrap_at_spaces_and_keep_a_figure_with_its_name() -> None:
    text = "lr=0.05 vs lr=0.01: no significant difference (Welch t on runs, p = 0.684, holm-adjusted) at the 5 % level"
    for width in range(30, 100):
        lines = wrapped(text, width, "  ", "    ")
        assert " ".join(line.strip() for line in lines) == text
        assert all(len(line) <= width for line in lines)
        assert any("p = 0.684," in line for line in lines)
        assert any("the 5 %" in line or "5 % level" in line for line in lines)


# --- paths as the user types them, hints that run as printed ------------------------------------------------------


@pytest.mark.unit
def test_a_path_is_shown_relative_to_where_the_command_ran_when_under_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarlab.files import typed

    monkeypatch.chdir(tmp_path)
    assert typed(tmp_path / "runs" / "a") == typed("runs/a") == "runs/a"
    assert typed(tmp_path) == "."
    assert typed(tmp_path.parent / "elsewhere") == str(tmp_path.parent / "elsewhere")  # not under it: absolute


@pytest.mark.unit
def test_the_confirmation_hint_of_a_search_runs_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import shlex

    from cifarlab import compare
    from cifarlab.analysis.metric import METRICS
    from cifarlab.analysis.searchview import Objective, summary

    folder = tmp_path / "runs" / "search"
    for seed in range(2):
        make_run(folder / "confirm", f"base-{seed}", [0.5], seed=seed)
    monkeypatch.chdir(tmp_path)
    hint = summary(folder, [], Objective(METRICS["final_acc"], True, None))[-1].split("fresh seeds: ")[1]
    assert hint == "python -m cifarlab.compare runs/search/confirm"
    words = shlex.split(hint)
    assert words[:3] == ["python", "-m", "cifarlab.compare"] and compare.main(words[3:]) == 0
    assert "by group" in capsys.readouterr().out
