"""Files others wrote, read in-process: a config file (a preset, a run's config.yaml, a sweep file, a sweep's record,
a study's journal) never resolves an interpolation that calls a resolver (``${oc.env:VAR}`` would put a variable's
value on the console, into config.yaml and W&B); the command line's do, once. A checkpoint's pickled files never
run code, and torch's loader is one without a known weights_only escape."""

from __future__ import annotations

import configparser
import json
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from accelerate import Accelerator
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file

from cifarlab import compare, evaluate, predict, summary, sweep, train
from cifarlab.analysis import results
from cifarlab.config import CheckpointConfig, ConfigError, load_config, to_yaml
from cifarlab.errors import UsageError
from cifarlab.experiments.runner import conflict
from cifarlab.experiments.spec import read_sweep
from cifarlab.experiments.study import StudyFeed, open_study
from cifarlab.run import pickles
from cifarlab.run.checkpoint import Checkpointer
from cifarlab.run.rundir import RunDir
from cifarlab.run.state import TrainState

from conftest import CONFIGS, REPO, error_lines

pytestmark = pytest.mark.unit

VARIABLE = "CIFARLAB_TEST_SECRET"
SECRET = "hunter2-never-shown"
SMOKE = str(CONFIGS / "smoke.yaml")


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(VARIABLE, SECRET)
    return SECRET


@pytest.fixture
def spy() -> Iterator[list[tuple[Any, ...]]]:
    """A resolver that records each call: proof that an interpolation was (not) resolved."""
    calls: list[tuple[Any, ...]] = []

    def called(*args: Any) -> str:
        calls.append(args)
        return "spied"

    OmegaConf.register_resolver("spy", called, replace=True)
    yield calls
    OmegaConf.clear_resolver("spy")


def one_error(capsys: pytest.CaptureFixture[str], *parts: str) -> str:
    """The command's only error line (checked to hold each of ``parts``); the secret is in nothing it printed."""
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    lines = error_lines(captured.err)
    assert len(lines) == 1 and len(captured.err.strip().splitlines()) == 1, captured.err
    assert all(part in lines[0] for part in parts), lines[0]
    return lines[0]


def preset(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- a config file calls no resolver ---------------------------------------------------------------------------

CALLS = [f"${{oc.env:{VARIABLE}}}", f"/data/${{oc.env:{VARIABLE},none}}", f"${{oc.decode:${{oc.env:{VARIABLE}}}}}",
         f"${{data.${{oc.env:{VARIABLE}}}}}", f"${{${{oc.env:{VARIABLE}}}:x}}", "${ spy : 1 }",
         "${oc.select:x,${spy:}}"]


@pytest.mark.parametrize("value", CALLS)
def test_a_preset_calling_a_resolver_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           spy: list[tuple[Any, ...]], value: str) -> None:
    file = preset(tmp_path / "p.yaml", f"data:\n  root: '{value}'\n")
    runs = tmp_path / "runs"
    assert train.main(["--config", str(file), f"train.output_dir={runs}", "train.run_name=r"]) == 2
    one_error(capsys, str(file), "data.root", "resolver", "command line")
    assert not runs.exists() and spy == []


def test_a_resolver_anywhere_in_a_preset_is_refused(tmp_path: Path, spy: list[tuple[Any, ...]]) -> None:
    file = preset(tmp_path / "p.yaml", "logging:\n  wandb:\n    tags: [a, '${spy:}']\n")
    with pytest.raises(ConfigError, match=r"logging\.wandb\.tags\[1\]"):
        load_config(str(file))
    assert summary.main(["--config", str(file)]) == 2
    assert spy == []


def test_plain_references_in_a_file_read_the_config_only(tmp_path: Path) -> None:
    file = preset(tmp_path / "p.yaml", "optim:\n  lr: 0.2\n  weight_decay: ${optim.lr}\n"
                                       "data:\n  root: /data/${model.name}\n")
    config = load_config(str(file), ["optim.lr=0.3", "model.name=resnet18"])
    assert (config.optim.weight_decay, config.data.root) == (0.3, "/data/resnet18")  # the command line's values
    escaped = preset(tmp_path / "e.yaml", "data:\n  root: '\\${oc.env:HOME}'\n")  # OmegaConf's escape: literal text
    assert load_config(str(escaped)).data.root == "${oc.env:HOME}"


def test_the_command_line_resolves_once_and_the_run_stores_the_value(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    typed = [f"train.run_name=${{oc.env:{VARIABLE}}}", "data.root=/data/${train.run_name}"]
    config = load_config(SMOKE, typed)
    assert (config.train.run_name, config.data.root) == (SECRET, f"/data/{SECRET}")
    written = preset(tmp_path / "config.yaml", to_yaml(config))  # as a run writes its config.yaml
    assert "${" not in written.read_text()
    assert load_config(str(written)) == config  # the resume command gives it back as --config
    assert train.main(["--config", SMOKE, *typed, "--print-config"]) == 0
    assert f"run_name: {SECRET}" in capsys.readouterr().out  # the person running it typed it


# --- nothing read back from a run folder is resolved ---------------------------------------------------------

def copied_run(root: Path, value: str = f"${{oc.env:{VARIABLE}}}") -> Path:
    """A finished run folder (config.yaml, classes, weights) someone else wrote, its data.root set to ``value``."""
    run = root / "copied"
    run.mkdir(parents=True)
    config = to_yaml(load_config(SMOKE, [f"train.output_dir={root}", "train.run_name=copied"]))
    (run / "config.yaml").write_text(re.sub(r"(?m)^  root: .*$", f"  root: '{value}'", config))
    assert value in (run / "config.yaml").read_text()
    (run / "classes.json").write_text(json.dumps([str(i) for i in range(10)]))
    save_file({"w": torch.zeros(1)}, str(run / "model.safetensors"))
    return run


def test_compare_shows_a_run_configs_text_unresolved(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     spy: list[tuple[Any, ...]]) -> None:
    run = copied_run(tmp_path / "runs")
    assert results.read_config(run / "config.yaml")["data.root"] == f"${{oc.env:{VARIABLE}}}"
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("name: lenet", "name: '${spy:}'"))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "test/acc": 0.5, "test/loss": 1.0, "test/images": 100,
                                                   "train/epoch": 1.0}) + "\n")
    assert compare.main([str(run.parent), "--by", "model.name", "--json"]) == 0
    shown = capsys.readouterr()
    assert "${spy:}" in shown.out and SECRET not in shown.out + shown.err and spy == []


@pytest.mark.parametrize("command", ["evaluate", "predict", "resume"])
def test_a_run_config_calling_a_resolver_is_never_resolved(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           spy: list[tuple[Any, ...]], command: str) -> None:
    run = copied_run(tmp_path / "runs")
    before = (run / "config.yaml").read_text()
    if command == "evaluate":
        code = evaluate.main(["--checkpoint", str(run)])
    elif command == "predict":
        Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
        code = predict.main(["--checkpoint", str(run), str(tmp_path / "a.png")])
    else:
        code = train.main(["--config", SMOKE, f"train.output_dir={run.parent}", "train.run_name=copied",
                           "train.resume=auto"])
    assert code == 2
    one_error(capsys, str(run / "config.yaml"), "data.root", "resolver")
    assert (run / "config.yaml").read_text() == before and spy == []
    written = {p.name for p in run.iterdir()} - {".lock"}  # the run's lock, taken before its config is read
    assert written == {"classes.json", "config.yaml", "model.safetensors"}


# --- sweeps: the file, its record, a study's journal ------------------------------------------------------------

def sweep_file(folder: Path, **spec: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "s.yaml"
    overrides = [f"train.output_dir={folder / 'runs'}", *spec.pop("overrides", [])]
    path.write_text(yaml.safe_dump({"name": "s", "base": SMOKE, "overrides": overrides, **spec}, sort_keys=False))
    return path


@pytest.mark.parametrize("spec, where", [
    ({"overrides": ["data.root=${spy:}"], "grid": {"optim.lr": [0.1]}}, "overrides"),
    ({"trials": [{"data.root": "${spy:}"}]}, "trials"),
    ({"grid": {"data.root": ["/a", "${oc.env:" + VARIABLE + "}"]}}, "grid"),
    ({"search": {"space": {"model.name": {"choice": ["lenet", "${spy:}"]}}, "trials": 2}}, "search"),
])
def test_a_sweep_file_calling_a_resolver_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    spy: list[tuple[Any, ...]], spec: dict[str, Any],
                                                    where: str) -> None:
    path = sweep_file(tmp_path, **dict(spec))
    assert sweep.main([str(path), "--dry-run"]) == 2
    one_error(capsys, str(path), where, "resolver")
    assert spy == [] and not (tmp_path / "runs").exists()


def test_a_sweep_base_calling_a_resolver_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = preset(tmp_path / "base.yaml", f"data:\n  root: '${{oc.env:{VARIABLE}}}'\n")
    path = sweep_file(tmp_path, grid={"optim.lr": [0.1]})
    path.write_text(path.read_text().replace(SMOKE, str(base)))
    assert sweep.main([str(path), "--dry-run"]) == 2
    one_error(capsys, str(base), "data.root", "resolver")


def test_a_sweeps_command_line_still_resolves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = sweep_file(tmp_path, grid={"optim.lr": [0.1]})
    assert sweep.main([str(path), "--dry-run", f"data.root=${{oc.env:{VARIABLE}}}"]) == 0
    assert f"'data.root=${{oc.env:{VARIABLE}}}'" in capsys.readouterr().out  # resolved by the trainer it starts


def test_a_sweep_record_and_a_trials_run_config_are_never_resolved(tmp_path: Path,
                                                                   spy: list[tuple[Any, ...]]) -> None:
    path = sweep_file(tmp_path, grid={"optim.lr": [0.2]})
    folder = tmp_path / "runs" / "s"
    folder.mkdir(parents=True)
    record = {"name": "s", "trials": [{"index": 0, "name": "lr=0.1", "overrides": ["optim.lr=0.1"], "command": ""}],
              "versions": [{"version": 1, "time": None, "source": str(path), "base": SMOKE,
                            "overrides": ["data.root=${spy:}"], "trials": [0]}]}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(record))
    read = read_sweep(str(path))  # the record's base and overrides are compared, its trials matched
    assert [t.name for t in read.trials] == ["lr=0.2"] and spy == []
    trial = read.trials[0]
    read.run_dir(trial).root.mkdir(parents=True)
    read.run_dir(trial).config.write_text("optim:\n  lr: ${spy:}\n")
    assert "does not load" in (conflict(read, trial) or "") and spy == []


def test_a_journals_value_calling_a_resolver_is_never_run(tmp_path: Path, spy: list[tuple[Any, ...]]) -> None:
    path = sweep_file(tmp_path, search={"space": {"model.name": {"choice": ["lenet", "resnet18"]}}, "trials": 2})
    searched = read_sweep(str(path))
    feed = StudyFeed(searched, open_study(searched))
    with pytest.raises(UsageError, match="resolver"):
        feed._trial(0, {"model.name": "${spy:}"})  # as a journal someone else wrote would hand it out
    assert spy == []


# --- checkpoints: pickles never run code; torch's floor -----------------------------------------------------

class Payload:
    """Unpickling this would run ``call(argument)``: a marker file appears."""

    def __init__(self, call: Any, argument: str) -> None:
        self.call, self.argument = call, argument

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return self.call, (self.argument,)


def saved_checkpoint(tmp_path: Path) -> tuple[Checkpointer, torch.nn.Module]:
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    saver = Checkpointer(accelerator, RunDir(tmp_path / "run"), CheckpointConfig(every_n_steps=2), 4)
    saver.save(TrainState(global_step=2))
    return saver, model


def replace_sealed(folder: Path, name: str, data: bytes) -> None:
    """Replace a checkpoint's file and its manifest entry, as someone sharing a checkpoint could."""
    import hashlib

    (folder / name).write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("victim", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl"])
@pytest.mark.parametrize("how", ["os.system", "builtins.exec", "plain pickle"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_nothing_runs(tmp_path: Path, victim: str,
                                                                         how: str) -> None:
    saver, model = saved_checkpoint(tmp_path)
    folder = saver.run.checkpoint(2)
    assert (folder / victim).is_file()
    marker = tmp_path / "executed"
    if how == "builtins.exec":
        payload = Payload(exec, f"open({str(marker)!r}, 'w').close()")
    else:
        payload = Payload(os.system, f"touch {marker}")
    buffer = tmp_path / "payload"
    if how == "plain pickle":
        buffer.write_bytes(pickle.dumps({"state": payload}, protocol=2))
    else:
        torch.save({"state": payload}, buffer)
    if how == "plain pickle":  # the payload is live: unpickled, it runs
        pickle.loads(buffer.read_bytes())
    else:
        torch.load(buffer, weights_only=False)
    assert marker.exists()
    marker.unlink()
    replace_sealed(folder, victim, buffer.read_bytes())
    with pytest.raises(UsageError) as refused:
        saver.load(folder, model)
    message = str(refused.value)
    assert "\n" not in message and victim in message and "nothing in it was executed" in message
    assert not marker.exists()


def torch_floor() -> str:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    (floor,) = re.findall(r"(?m)^\s*torch>=(\S+)$", setup["options"]["install_requires"])
    return floor


def test_torch_is_one_without_a_known_weights_only_escape() -> None:
    # CVE-2025-32434 (fixed in 2.6) and CVE-2026-24747 (fixed in 2.10): torch.load(weights_only=True) ran code.
    assert torch_floor() == pickles.SAFE_TORCH
    assert tuple(int(part) for part in pickles.SAFE_TORCH.split(".")) >= (2, 10)
    assert torch.__version__ >= pickles.SAFE_TORCH


def test_an_older_torch_loads_no_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saver, model = saved_checkpoint(tmp_path)
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.9.1"))

    def unpickled(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load ran")

    monkeypatch.setattr(torch, "load", unpickled)
    with pytest.raises(UsageError, match=r"torch 2\.9\.1 .*upgrade torch to >= 2\.10") as refused:
        saver.load(saver.run.checkpoint(2), model)
    assert "\n" not in str(refused.value)
