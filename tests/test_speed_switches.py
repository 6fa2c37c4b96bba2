"""The speed and accuracy switches (channels_last, EMA, TTA, cutout, torch.compile) through the trainer's main():
they keep the foundation's guarantees (1 vs 2 processes, exact evaluation counts, exact resume), and the
weights the run evaluated are the ones it saves and the ones evaluate loads. The 2-process runs are launched (one
launch for the module); the 1-process runs are in this process."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import (
    CONFIGS,
    assert_one_and_two_processes_agree_and_resume_exactly,
    assert_same_weights,
    check,
    in_process,
    metrics,
    run_two,
    smoke,
    train_here,
)

pytestmark = pytest.mark.integration

SWITCHES = ("data.loader=tensor", "data.cutout=8", "train.channels_last=true", "train.ema=0.9",
            "train.tta=flip_translate", "data.test_size=37", "train.eval_batch_size=8", "checkpoint.keep_last=100")
COMPILED = ("data.loader=tensor", "train.epochs=1", "checkpoint.every_n_steps=null", "train.grad_accum_steps=2")


def fast(output: Path, name: str) -> list[str]:
    """The fast preset on a little fake data, one epoch: run ``name`` under ``output/runs``."""
    return ["--config", str(CONFIGS / "fast.yaml"), "data.name=fake", "data.train_size=128", "data.test_size=37",
            "train.batch_size=32", "train.eval_batch_size=8", "train.epochs=1", "optim.warmup_epochs=0",
            f"train.output_dir={output / 'runs'}", "logging.wandb.mode=disabled", f"train.run_name={name}"]


Launched = tuple[Path, dict[str, subprocess.CompletedProcess[str]]]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Launched:
    """The module's three 2-process runs in one launch (conftest.run_two): the switches, the fast preset, and the
    compiled model (last: Dynamo's caches stay in the processes). Their folder (runs under ``runs/``) and each one's
    outcome by name."""
    root = tmp_path_factory.mktemp("two")
    named = {"switches": smoke(root, "switches", *SWITCHES), "fast": fast(root, "fast"),
             "compiled": smoke(root, "compiled", *COMPILED, "train.compile=true")}
    return root, dict(zip(named, run_two(root, *named.values())))


def test_all_switches_keep_sharding_counts_and_resume_exact(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            two: Launched) -> None:
    root, outcomes = two
    one = assert_one_and_two_processes_agree_and_resume_exactly(  # EMA in the resume
        tmp_path, capsys, *SWITCHES, launched=(root / "runs" / "switches", outcomes["switches"]))

    # The saved model is the average, as in every checkpoint's ema.safetensors.
    last = one / "checkpoints" / "step_00000016"
    average = {k.removeprefix("module."): v for k, v in load_file(str(last / "ema.safetensors")).items()
               if k != "n_averaged"}
    final = load_file(str(one / "model.safetensors"))
    assert final.keys() == average.keys()
    assert all((final[k] == average[k]).all() for k in final)
    raw = load_file(str(last / "model.safetensors"))
    assert any(not (raw[k] == final[k]).all() for k in final)  # not the raw weights

    # evaluate loads the average from a checkpoint folder and applies the run's TTA: the run's figure.
    result = check(in_process(["--checkpoint", str(last)], capsys, module="cifarlab.evaluate"))
    reported = float(re.search(r"test accuracy ([\d.]+) %", result.stdout).group(1))  # type: ignore[union-attr]
    assert reported == round(100 * metrics(one)[-1]["test/acc"], 2)


def test_compiled_ddp_model_trains_like_the_eager_one_with_accumulation(tmp_path: Path, two: Launched) -> None:
    """train.compile with torch's own backend (inductor: generated kernels) on 2 processes compiles the DDP-wrapped
    model from the outside (Dynamo's DDPOptimizer), also through the accumulation steps that skip DDP's gradient sync
    (no_sync): the weights are the eager run's within 1e-4. The eager reference is one process, in this one (1 and 2
    eager processes agree within 1e-6: test_all_switches_keep_sharding_counts_and_resume_exact). train.compile on 1
    process is test_loop.py's test_compile_makes_one_graph_for_training_and_reports_its_seconds (the eager run's
    weights, bitwise, through Dynamo with its "eager" backend): what inductor's kernels compute is torch's to test,
    and one compile of them here costs tens of seconds of 2 cores."""
    root, outcomes = two
    check(outcomes["compiled"])
    eager = train_here(tmp_path, "eager", *COMPILED)
    compiled = root / "runs" / "compiled"
    assert_same_weights(eager / "model.safetensors", compiled / "model.safetensors", atol=1e-4)
    assert [m["test/images"] for m in metrics(eager)] == [m["test/images"] for m in metrics(compiled)] == [100]
    assert "train/compile_seconds" in metrics(compiled)[0]


def test_fast_preset_runs_on_cpu_and_whitens_its_stem(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      two: Launched) -> None:
    check(in_process(fast(tmp_path, "one"), capsys))
    # BatchNorm statistics are per process (no SyncBatchNorm), so 2 processes are checked for counts only.
    root, outcomes = two
    check(outcomes["fast"])
    one = tmp_path / "runs" / "one"
    assert metrics(one)[0]["test/images"] == metrics(root / "runs" / "fast")[0]["test/images"] == 37
    stem = load_file(str(one / "model.safetensors"))["stem.weight"]
    assert stem.shape == (24, 3, 2, 2)
    assert torch.equal(stem[12:], -stem[:12])  # set by init_whitening (filters and their negatives), and frozen
