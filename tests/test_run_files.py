"""The files of a run directory (cifarlab.run.rundir's map): a trainer killed inside any write loses no resume, a link
planted in a run directory (or where the sweep, search and data cache write) is never written through, a refused
resume writes nothing, and each start's record names its git commit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from test_loop import TINY, stop_at, tiny_config

from cifarlab import files
from cifarlab import train as train_command
from cifarlab.analysis.sweepdir import SweepDir
from cifarlab.config import TrainConfig, load_config
from cifarlab.data import tensors
from cifarlab.errors import Preempted, UsageError
from cifarlab.experiments import runner, study
from cifarlab.report.console import Console
from cifarlab.report.metrics import EvalResult
from cifarlab.run import checkpoint, environment, loop, pruning, tracking
from cifarlab.run.recorder import Recorder
from cifarlab.run.rundir import RunDir, read_metrics
from cifarlab.run.runlock import RunLock
from cifarlab.run.state import Pace, TrainState

from conftest import CONFIGS, REPO, cli_env, error_lines, records

EPOCHS = "train.epochs=2"  # 4 steps per epoch (test_loop.TINY), checkpoints every 2 steps and at epoch ends


def arguments(root: Path, *overrides: str) -> list[str]:
    """The trainer's command line for test_loop.tiny_config(root, EPOCHS, *overrides)."""
    return ["--config", str(CONFIGS / "smoke.yaml"), *TINY, EPOCHS, f"train.output_dir={root}", "train.run_name=tiny",
            *overrides]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a run stopped by SIGTERM at step 5 (mid-epoch 2 of 2: checkpoints of steps 2, 4 and 5);
    use a :func:`copy`."""
    root = tmp_path_factory.mktemp("stopped")
    with pytest.MonkeyPatch.context() as patch:
        stop_at(patch, 5)
        with pytest.raises(Preempted):
            loop.train(tiny_config(root, EPOCHS))
    return root


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """The same run, not interrupted."""
    return RunDir(loop.train(tiny_config(tmp_path_factory.mktemp("whole"), EPOCHS)))


def copy(stopped: Path, tmp_path: Path) -> RunDir:
    shutil.copytree(stopped, tmp_path / "runs", symlinks=True)
    return RunDir(tmp_path / "runs" / "tiny")


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` (the trainers' lock aside, which its holder rewrites): bytes and mode."""
    return {str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".lock"}


def same_weights(a: RunDir, b: RunDir) -> bool:
    first, second = load_file(str(a.weights)), load_file(str(b.weights))
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


# --- item 10: a kill inside a write loses no resume -------------------------------------------------------------

@pytest.mark.unit
def test_a_torn_history_line_is_left_out_and_the_next_change_follows_it_whole(
        stopped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy(stopped, tmp_path)
    earlier = json.dumps({"step": 0, "time": 1765000000.0, "changes": {"optim.lr": [0.01, 0.02]}})
    run.history.write_text(f'{earlier}\n{{"step": 5, "time": 1765000001.0, "chan')  # killed while appending
    capsys.readouterr()
    assert train_command.main(arguments(run.root.parent, "train.resume=auto", "optim.lr=0.03",
                                        "train.allow_changes=true")) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "torn last line" in line]
    assert notes == [f"cifarlab: note: {run.history}:2: left out a torn last line (a trainer killed while writing it); "
                     f"the file is rewritten without it"]
    lines = [json.loads(line) for line in run.history.read_text().splitlines()]
    assert [(line["step"], line["changes"]) for line in lines] == [(0, {"optim.lr": [0.01, 0.02]}),
                                                                   (5, {"optim.lr": [0.02, 0.03]})]
    assert run.finished()


@pytest.mark.unit
@pytest.mark.parametrize("written", ["", "12", "x"])
def test_a_wandb_step_that_is_not_a_number_is_noted_and_the_run_resumes(
        stopped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], written: str) -> None:
    run = copy(stopped, tmp_path)
    run.wandb_step.write_text(written)  # what an older trainer killed while writing it left ('': truncated)
    capsys.readouterr()
    assert train_command.main(arguments(run.root.parent, "train.resume=auto")) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "wandb_step" in line]
    assert notes == ([] if written.isdigit() else
                     [f"cifarlab: note: {run.wandb_step}: not a step number ({written!r}); W&B will ignore, with a "
                      f"warning, the steps it already has"])
    assert run.finished()


@pytest.mark.unit
def test_what_a_kill_inside_a_whole_write_leaves_is_removed_and_the_resume_matches_the_whole_run(
        stopped: Path, whole: RunDir, tmp_path: Path) -> None:
    run = copy(stopped, tmp_path)
    # A kill inside files.write_whole leaves the old file and half a temporary one; inside save_weights, a folder.
    leftovers = [run.root / ".tmp-environment.json.k2j4", run.root / ".tmp-wandb_step.x81a",
                 run.checkpoints / ".tmp-latest.9zq1"]
    for leftover in leftovers:
        leftover.write_text('{"starts": [{"pyth')
    (run.root / ".tmp-model.safetensors.f00d").mkdir()
    (run.root / ".tmp-model.safetensors.f00d" / "model.safetensors").write_bytes(b"\x08\x00")
    assert train_command.main(arguments(run.root.parent, "train.resume=auto")) == 0
    assert not [p for p in [*run.root.iterdir(), *run.checkpoints.iterdir()] if p.name.startswith(".tmp-")]
    assert len(json.loads(run.environment.read_text())["starts"]) == 2 and same_weights(run, whole)


# Each file, killed inside its N-th write in the start named: 'resumed' continues the stopped run (with the
# overrides), 'first' is the run's first start.
KILLS = [("metrics.jsonl", 2, "resumed", ()),  # the first append (1: the start's rewrite)
         ("history.jsonl", 1, "resumed", ("optim.lr=0.03", "train.allow_changes=true")),
         ("environment.json", 1, "resumed", ()),
         ("wandb_step", 2, "resumed", ("logging.wandb.mode=offline",)),
         ("latest", 1, "resumed", ()),
         ("trainer_state.json", 1, "resumed", ()),
         ("predictions.safetensors", 1, "resumed", ()),
         ("model.safetensors", 1, "resumed", ()),
         ("config.yaml", 1, "first", ()),
         ("classes.json", 1, "first", ())]


@pytest.fixture(scope="module")
def killed(stopped: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RunDir, dict[str, Any]]]:
    """Each of KILLS in a folder of its own (a copy of the stopped run, or none yet for a first start), its trainer
    killed inside the write: forked one after the other from one process that imports the trainer once
    (tests/kill_in_write.py --each), instead of ten interpreters each importing it. By file name: the run, and the
    kill with its fate ("signal", or "exit" if the trainer was not killed) and its output ("log")."""
    plan, runs = [], {}
    for name, nth, start, overrides in KILLS:
        folder = tmp_path_factory.mktemp(f"killed-{name}")
        run = copy(stopped, folder) if start == "resumed" else RunDir(folder / "runs" / "tiny")
        resume = ("train.resume=auto",) if start == "resumed" else ()
        plan.append({"name": name, "nth": nth, "arguments": arguments(run.root.parent, *resume, *overrides),
                     "cwd": str(folder), "log": str(folder / "killed.log")})
        runs[name] = run
    plan_file = tmp_path_factory.mktemp("kills") / "plan.json"
    plan_file.write_text(json.dumps(plan))
    forked = subprocess.run([sys.executable, str(REPO / "tests" / "kill_in_write.py"), "--each", str(plan_file)],
                            env=cli_env(), capture_output=True, text=True, timeout=600)
    assert forked.returncode == 0, forked.stderr[-3000:]
    return {kill["name"]: (runs[kill["name"]], kill) for kill in json.loads(plan_file.read_text())}


@pytest.mark.integration
@pytest.mark.parametrize("name,nth,start,overrides", KILLS, ids=[kill[0] for kill in KILLS])
def test_a_trainer_killed_inside_any_write_resumes_to_the_whole_runs_weights(
        killed: dict[str, tuple[RunDir, dict[str, Any]]], whole: RunDir, name: str, nth: int, start: str,
        overrides: tuple[str, ...]) -> None:
    run, kill = killed[name]
    assert kill.get("signal") == signal.SIGKILL, Path(kill["log"]).read_text()[-3000:]  # SIGKILL, inside the write:
    if name.endswith(".jsonl"):  # appended: a torn last line
        assert not (run.root / name).read_text().endswith("\n")
    else:  # replaced whole: its temporary file, the file itself as it was
        assert [p for p in run.root.rglob(f".tmp-{name}.*")]
    again = [item for item in overrides if not item.startswith("logging.wandb.")]  # W&B off in this process
    assert train_command.main(arguments(run.root.parent, "train.resume=auto", *again)) == 0
    assert run.finished() and not [p for p in run.root.iterdir() if p.name.startswith(".tmp-")]
    assert [r["step"] for r in records(run.root)] == [2, 4, 4, 6, 8, 8]  # every line whole, each step once
    if name == "wandb_step":
        assert run.wandb_step.read_text().isdigit()
    if name == "history.jsonl":  # the killed start's line torn and left out; the resume's whole
        (line,) = [json.loads(line) for line in run.history.read_text().splitlines()]
        assert line["changes"] == {"optim.lr": [0.02, 0.03]}
    else:
        assert same_weights(run, whole)


# --- item 12: links in a run directory are never written through --------------------------------------------------

FOLDERS = ("wandb", "checkpoints", "checkpoints/step_00000005", "checkpoints/best")
PLANTED = [".lock", "config.yaml", "classes.json", "metrics.jsonl", "history.jsonl", "environment.json", "wandb_step",
           "predictions.safetensors", "model.safetensors", *FOLDERS, "checkpoints/latest",
           "checkpoints/step_00000005/trainer_state.json", ".tmp-environment.json"]


def plant(run: RunDir, name: str, tmp_path: Path) -> Path:
    """A link at ``name`` in the run directory to someone's file (or folder: a copy of the run's own), with its
    mode 0600; returns that target."""
    at, target = run.root / name, tmp_path / "someone" / Path(name).name
    target.parent.mkdir(exist_ok=True)
    if at.is_dir():
        shutil.copytree(at, target)
        shutil.rmtree(at)
    elif name in FOLDERS:
        target.mkdir()
        (target / "notes.txt").write_text("someone's notes\n")
    else:
        target.write_text("someone's notes\n")
        at.unlink(missing_ok=True)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    at.symlink_to(target)
    return target


def refused(run: RunDir, name: str, target: Path, stderr: str, cwd: Optional[Path] = None) -> bool:
    """One line, naming the link (relative to ``cwd``, where the command ran, when given) and where it points."""
    link = run.root / name if cwd is None else (run.root / name).relative_to(cwd)
    return error_lines(stderr) == [f"cifarlab: error: {link} is a symbolic link (to {target}); cifarlab "
                                   f"does not write through links it did not create: remove it (or put a copy of the "
                                   f"file it points to in its place) and run again"]


@pytest.mark.unit
@pytest.mark.parametrize("name", PLANTED)
def test_a_link_planted_in_a_stopped_run_is_refused_and_what_it_points_to_is_untouched(
        stopped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    run = copy(stopped, tmp_path)
    target = plant(run, name, tmp_path)
    before, theirs = snapshot(run.root), snapshot(target.parent)
    assert train_command.main(arguments(run.root.parent, "train.resume=auto")) == 2
    assert refused(run, name, target, capsys.readouterr().err)
    assert snapshot(target.parent) == theirs and snapshot(run.root) == before and (run.root / name).is_symlink()


@pytest.mark.unit
def test_a_lock_link_is_refused_also_by_a_start_that_finds_the_run_finished_or_a_fresh_one(
        whole: RunDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDir(tmp_path / "runs" / "tiny")
    shutil.copytree(whole.root, run.root)
    target = plant(run, ".lock", tmp_path)
    assert train_command.main(arguments(run.root.parent, "train.resume=auto")) == 2
    assert refused(run, ".lock", target, capsys.readouterr().err) and target.read_text() == "someone's notes\n"
    # A fresh run directory holding only a dangling config.yaml link: not created through it.
    fresh = RunDir(tmp_path / "fresh" / "tiny")
    fresh.root.mkdir(parents=True)
    fresh.config.symlink_to(tmp_path / "nowhere.yaml")
    assert train_command.main(arguments(fresh.root.parent)) == 2
    assert refused(fresh, "config.yaml", tmp_path / "nowhere.yaml", capsys.readouterr().err)
    assert not (tmp_path / "nowhere.yaml").exists()


@pytest.mark.unit
def test_the_run_directory_and_output_folder_may_be_links(whole: RunDir, tmp_path: Path) -> None:
    """Runs on a scratch disk through a link: the link is above the run's files, not among them."""
    (tmp_path / "scratch").mkdir()
    (tmp_path / "runs").symlink_to(tmp_path / "scratch")  # train.output_dir is a link
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "scratch" / "tiny").symlink_to(tmp_path / "elsewhere")  # and so is the run directory
    assert train_command.main(arguments(tmp_path / "runs")) == 0
    assert same_weights(RunDir(tmp_path / "elsewhere"), whole)


def _recorder(run: RunDir) -> Recorder:
    config = tiny_config(run.root.parent)
    return Recorder(Accelerator(cpu=True), run, Console(True, quiet=True), Pace(config.train.batch_size, 4),
                    config.train.epochs, config.logging.every_n_steps)


def _record_to_wandb(run: RunDir) -> None:
    # As if W&B were on (Accelerate has no tracker to log to).
    tracking.WandbTracker(Accelerator(cpu=True), object(), run.wandb_step, -1, "tiny").log({"train/loss": 1.0}, 2)


def _checkpointer(run: RunDir) -> tuple[checkpoint.Checkpointer, torch.nn.Module]:
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))
    return checkpoint.Checkpointer(accelerator, run, load_config().checkpoint, 4), model


def _save_weights(run: RunDir) -> None:
    saver, model = _checkpointer(run)
    saver.save_weights(model)


def _save_checkpoint(run: RunDir) -> None:
    saver, _ = _checkpointer(run)
    saver.save(TrainState(global_step=2))


def _predictions(run: RunDir) -> None:
    labels = torch.tensor([0, 1])
    result = EvalResult.from_predictions(labels.clone(), labels, torch.zeros(2), ("a", "b"), torch.zeros(2, 2))
    _recorder(run).predictions(result, load_config().data, ("a", "b"))


def _rewrite_metrics(run: RunDir) -> None:
    run.metrics.write_text('{"step": 1}\n')
    _recorder(run).start(TrainState())


def _write_run_files(run: RunDir) -> None:
    loop.write_run_files(run, tiny_config(run.root.parent), ["a"], {})


WRITERS: dict[str, Callable[[RunDir], object]] = {
    ".lock": lambda run: RunLock(run).acquire(),
    "config.yaml": _write_run_files,  # written where there is none: the link dangles
    "classes.json": _write_run_files,
    "environment.json": lambda run: environment.write(run, {"python": "3"}),
    "history.jsonl": lambda run: loop.note_changes(run, {"optim.lr": [0.1, 0.2]}, 4, print),
    "metrics.jsonl": lambda run: _recorder(run).record({"train/loss": 1.0}, 2),
    "wandb_step": _record_to_wandb,
    "predictions.safetensors": _predictions,
    "model.safetensors": _save_weights,
    "checkpoints/latest": _save_checkpoint,
}


@pytest.mark.unit
@pytest.mark.parametrize("name", list(WRITERS))
def test_each_writer_of_a_run_file_refuses_a_link_there(tmp_path: Path, name: str) -> None:
    """Each write path on its own (the start's check aside), as a link planted while the run runs meets it."""
    run = RunDir(tmp_path / "runs" / "tiny")
    (run.root / Path(name).parent).mkdir(parents=True)
    target = plant(run, name, tmp_path)
    if name == "config.yaml":
        target.unlink()
    with pytest.raises(UsageError, match=f"^{run.root / name} is a symbolic link .to {target}.; cifarlab does not"):
        WRITERS[name](run)
    if name == "config.yaml":
        assert not target.exists()
    else:
        assert target.read_text() == "someone's notes\n" and stat.S_IMODE(target.stat().st_mode) == 0o600


# The fixed temporary names writers used before (a link there was written through, and chmodded on publishing).
OLD_TEMPORARIES: dict[str, Callable[[RunDir], object]] = {
    ".tmp-environment.json": lambda run: environment.write(run, {"python": "3"}),
    ".tmp-metrics.jsonl": _rewrite_metrics,
    ".tmp-predictions.safetensors": _predictions,
    "checkpoints/.tmp-latest": _save_checkpoint,
}


@pytest.mark.unit
@pytest.mark.parametrize("name", list(OLD_TEMPORARIES))
def test_temporary_files_have_names_of_their_own(tmp_path: Path, name: str) -> None:
    run = RunDir(tmp_path / "runs" / "tiny")
    (run.root / Path(name).parent).mkdir(parents=True)
    target = plant(run, name, tmp_path)
    OLD_TEMPORARIES[name](run)
    assert target.read_text() == "someone's notes\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert (run.root / name).is_symlink()


@pytest.mark.unit
def test_the_decoded_image_cache_is_not_written_through_a_link(tmp_path: Path) -> None:
    config = load_config(None, ["data.name=imagefolder", f"data.root={tmp_path}"]).data
    cache = tensors._cache_file(config, "train", "k")
    cache.parent.mkdir()
    (tmp_path / "someone").write_text("someone's notes\n")
    cache.symlink_to(tmp_path / "someone")
    warnings: list[str] = []
    assert not tensors._save_cache(config, "train", "k", torch.zeros(1, 3, 2, 2, dtype=torch.uint8),
                                   torch.zeros(1, dtype=torch.long), warnings.append)
    assert (tmp_path / "someone").read_text() == "someone's notes\n" and len(warnings) == 1
    assert "is a symbolic link" in warnings[0] and not [p for p in cache.parent.iterdir() if p != cache]


@pytest.mark.unit
@pytest.mark.parametrize("name", ["search.journal", "sweep.yaml", "logs/trial-0000.log", "claims/trial-0000.lock"])
def test_the_sweep_folders_writers_refuse_a_link(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "sweep"
    (folder / Path(name).parent).mkdir(parents=True)
    (tmp_path / "someone").write_text("someone's notes\n")
    (folder / name).symlink_to(tmp_path / "someone")
    write: dict[str, Callable[[], object]] = {
        "search.journal": lambda: pruning.journal(str(folder / name)),
        "sweep.yaml": lambda: runner.write_whole(folder / name, "trials: []\n"),
        "logs/trial-0000.log": lambda: files.open_append(folder / name),  # the runner's trial log
        "claims/trial-0000.lock": lambda: study.Claims(SweepDir(folder)).claim("trial-0000"),
    }
    with pytest.raises(UsageError, match=f"^{folder / name} is a symbolic link"):
        write[name]()
    assert (tmp_path / "someone").read_text() == "someone's notes\n"


@pytest.mark.integration
def test_a_trainer_started_in_a_run_folder_with_a_planted_lock_link_leaves_its_target_alone(
        stopped: Path, tmp_path: Path) -> None:
    run = copy(stopped, tmp_path)
    target = plant(run, ".lock", tmp_path)
    result = subprocess.run([sys.executable, "-m", "cifarlab.train", *arguments(run.root.parent, "train.resume=auto")],
                            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and refused(run, ".lock", target, result.stderr, cwd=tmp_path)
    assert target.read_text() == "someone's notes\n" and stat.S_IMODE(target.stat().st_mode) == 0o600


# --- item 11: a refused resume writes nothing ---------------------------------------------------------------------

@pytest.mark.unit
def test_resuming_another_models_checkpoint_says_what_differs_writes_nothing_and_the_corrected_command_works(
        stopped: Path, whole: RunDir, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy(stopped, tmp_path)
    before = snapshot(run.root)
    monkeypatch.chdir(tmp_path)  # the refusal names the checkpoint relative to where the command ran
    changed = ("model.name=resnet18", "train.allow_changes=true")
    assert train_command.main(arguments(run.root.parent, "train.resume=auto", *changed)) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"cifarlab: error: checkpoint {run.checkpoint(5).relative_to(tmp_path)} does not fit this run's model: it "
        f"has no tensor stem.0.weight (saved by model.name=lenet); resume it with the settings it was saved with, "
        f"or start a new run (a new train.run_name, without train.resume)"]
    assert snapshot(run.root) == before
    assert train_command.main(arguments(run.root.parent, "train.resume=auto")) == 0
    assert same_weights(run, whole)

    # Another model's checkpoint, by path, into a new run: nothing of the new run is left; corrected, it trains.
    other = RunDir(run.root.parent / "other")
    from_path = (f"train.resume={run.checkpoint(5)}", "train.run_name=other")
    assert train_command.main(arguments(run.root.parent, *from_path, "model.name=convnet_bn")) == 2
    assert "does not fit this run's model: " in capsys.readouterr().err and not other.root.exists()
    assert train_command.main(arguments(run.root.parent, *from_path)) == 0 and same_weights(other, whole)


# --- the smaller items: run names, seeds, metrics lines, git ------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "/tmp"])
def test_a_run_name_that_is_not_one_folder_is_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    assert train_command.main([*arguments(tmp_path / "runs"), f"train.run_name={name}"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"cifarlab: error: train.run_name={name!r} must be one folder name (not empty, '.' or '..', no '/'): the run "
        f"directory is train.output_dir/<train.run_name>"]
    assert list(tmp_path.iterdir()) == []
    for named in ("", "a\0b"):  # from YAML ("" on the command line is null: a generated name; argv holds no NUL)
        with pytest.raises(UsageError, match="must be one folder name"):
            TrainConfig(run_name=named)


@pytest.mark.unit
@pytest.mark.parametrize("seed", [-1, 2**32, 2**40])
def test_a_seed_outside_numpys_range_is_refused_in_one_line(capsys: pytest.CaptureFixture[str], seed: int) -> None:
    assert train_command.main(["--config", str(CONFIGS / "smoke.yaml"), f"train.seed={seed}", "--print-config"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"cifarlab: error: train.seed={seed} must be from 0 to 4294967295 (numpy's seeds)"]
    assert load_config(None, [f"train.seed={2**32 - 1}"]).train.seed == 2**32 - 1


@pytest.mark.unit
@pytest.mark.parametrize("line", ["[1, 2]", "3", '"step"', "null", '{"time": 1.0}', '{"step": "4"}'])
def test_a_metrics_line_that_is_json_but_not_a_record_is_refused_in_one_line(
        stopped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str) -> None:
    run = copy(stopped, tmp_path)
    with open(run.metrics, "a") as handle:
        handle.write(line + "\n")
    number = len(run.metrics.read_text().splitlines())
    message = (f"{run.metrics}:{number}: not a record (a JSON object with an integer \"step\"): {line!r}; the file is "
               f"damaged; repair or delete that line")
    for torn in (True, False):  # also where a torn last line is left out: a JSON value is no torn record
        with pytest.raises(UsageError) as error:
            read_metrics(run.metrics, tail_may_be_torn=torn)
        assert str(error.value) == message
    assert train_command.main(arguments(run.root.parent, "train.resume=auto")) == 2
    assert error_lines(capsys.readouterr().err) == [f"cifarlab: error: {message}"]


@pytest.mark.unit
def test_the_run_record_names_the_commit_of_the_checkout_cifarlab_runs_from() -> None:
    """The tests run from a git checkout or worktree (whose .git is a file)."""
    assert environment.CHECKOUT == REPO
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True)
    expected = {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    assert environment._git(environment.CHECKOUT) == expected


@pytest.mark.unit
def test_files_write_whole_replaces_atomically_with_the_umask_mode(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("old")
    os.chmod(path, 0o600)
    files.write_whole(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == files.normal_mode()
    assert [p.name for p in tmp_path.iterdir()] == ["state"]
