"""Shared helpers: run the real CLI in a subprocess, find the shared CIFAR-10 copy."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def run_cli(args: list[str], cwd: Path, processes: int = 1, module: str = "cifarlab.train",
            timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``accelerate launch -m MODULE ARGS`` with 1 process, or N gloo processes on the CPU."""
    launch = ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--num_processes", "1"]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", module, *args]
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_API_KEY", None)  # tests never go online
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m cifarlab.train ARGS``: the trainer's own exit code, without a launcher around it."""
    env = {**os.environ, "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", "cifarlab.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def smoke(tmp_path: Path, run_name: str, *overrides: str) -> list[str]:
    """Arguments for a smoke run writing under ``tmp_path/runs``, W&B off unless overridden."""
    return ["--config", str(CONFIGS / "smoke.yaml"), f"train.output_dir={tmp_path / 'runs'}",
            f"train.run_name={run_name}", "logging.wandb.mode=disabled", *overrides]


def check(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    return result


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cifarlab: error:")]


@pytest.fixture(scope="session")
def cifar10_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CIFAR-10 JPEG copy from ../shared, extracted once per session (skip when absent)."""
    if not SHARED_TARBALL.is_file():
        pytest.skip(f"{SHARED_TARBALL} not found: the real-data tests need ../shared beside the checkout")
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(SHARED_TARBALL) as archive:
        archive.extractall(root, filter="data")
    return root
