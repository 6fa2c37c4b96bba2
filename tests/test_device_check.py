"""bench/device_check.sh rehearsed on the CPU (bench/device_rehearsal.sh): the one call a session lent a GPU makes
runs end to end with the device's package set (no wandb, omegaconf from the carried wheel), on a tiny copy of the
real JPEG data. About 100 s on a 2-core machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_TARBALL

pytestmark = pytest.mark.integration


def carried_folder(tmp_path: Path) -> Path:
    """The checkout's prepared .device, or one prepared here (bench/device_prepare.sh; skip when it cannot be)."""
    prepared = REPO / ".device"
    if (prepared / "cifar10-jpeg.tar.gz").is_file() and any((prepared / "wheels").glob("omegaconf-*.whl")):
        return prepared
    if not SHARED_TARBALL.is_file():
        pytest.skip(f"{SHARED_TARBALL} not found: the rehearsal needs the JPEG copy (bench/README.md, Device check)")
    folder = tmp_path / "device"
    made = subprocess.run([str(REPO / "bench" / "device_prepare.sh")], capture_output=True, text=True,
                          env={**os.environ, "DEVICE_DIR": str(folder), "PYTHON": sys.executable,
                               "CIFARLAB_JPEG_TARBALL": str(SHARED_TARBALL)})
    if made.returncode != 0:
        pytest.skip(f"could not prepare the carried folder (no package index?): {made.stderr.strip()[-300:]}")
    return folder


def test_the_device_check_runs_end_to_end_on_the_cpu_with_the_devices_packages(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "OUT")}
    env.update(DEVICE_DIR=str(carried_folder(tmp_path)), DEVICE_WORK=str(tmp_path / "work"),
               OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    result = subprocess.run([str(REPO / "bench" / "device_rehearsal.sh")], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = tmp_path / "out"
    assert sorted(path.name for path in out.iterdir()) == ["device_check.json", "device_check.log", "device_check.md"]
    sections = json.loads((out / "device_check.json").read_text())["sections"]
    assert list(sections) == ["environment", "data", "sync", "fast", "resume", "versus", "precision"]
    assert all(section["status"] == "ok" for section in sections.values()), sections
    importable = sections["environment"]["importable"]
    assert importable == {"wandb": False, "omegaconf": True, "airbench": True, "scipy": True}  # as on the device
    assert sections["sync"]["wandb_imported"] is False  # the package runs without wandb when W&B is off
    assert sections["fast"]["eager"]["evaluations"] == 1  # the speed-record mode: evaluated at the end only
    assert sections["resume"]["bitwise_equal"] is True
    assert [run["evaluations"] for run in sections["versus"]["fast"]["runs"]] == [1, 1]
    assert {"tensor-no", "torchvision-bf16"} <= set(sections["precision"])
