"""bench/device_check.sh rehearsed on the CPU (bench/device_rehearsal.sh): the one call a session lent a GPU makes
runs end to end with the device's package set (no wandb, omegaconf from the carried wheel), on a tiny copy of the
real JPEG data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO, SHARED_TARBALL

pytestmark = pytest.mark.integration

PER_CLASS = 5
"""The rehearsal's --tiny-per-class: training images a class (and max(PER_CLASS // 5, 2) test images)."""


def tiny_tarball(folder: Path) -> Path:
    """The shared JPEG tarball cut down to the images the rehearsal trains and tests on, the first of each class
    folder by name (which bench/device_check.py's --tiny copies): device_check.sh unpacks it as it unpacks the whole
    copy on the device, without unpacking 60,000 files here."""
    wanted = {"train": PER_CLASS, "test": max(PER_CLASS // 5, 2)}
    with tarfile.open(SHARED_TARBALL) as archive:
        members = [member for member in archive.getmembers() if member.isfile()]
        chosen: dict[str, list[tarfile.TarInfo]] = {}
        for member in members:
            split, label = Path(member.name).parts[-3:-1]
            chosen.setdefault(f"{split}/{label}", []).append(member)
        kept = [member for folder_name, found in chosen.items()
                for member in sorted(found, key=lambda m: Path(m.name).name)[:wanted[folder_name.split("/")[0]]]]
        assert len(kept) == 10 * sum(wanted.values()), sorted(chosen)
        tiny = folder / "cifar10-jpeg.tar.gz"
        with tarfile.open(tiny, "w:gz") as small:
            for member in kept:
                small.addfile(member, archive.extractfile(member))
    return tiny


def carried_folder(tmp_path: Path) -> Path:
    """A carried folder with the tiny tarball and the wheels: the checkout's prepared .device's, or ones prepared
    here (bench/device_prepare.sh; skip when it cannot be)."""
    if not SHARED_TARBALL.is_file():
        pytest.skip(f"{SHARED_TARBALL} not found: the rehearsal needs the JPEG copy (bench/README.md, Device check)")
    folder = tmp_path / "device"
    folder.mkdir()
    tarball = tiny_tarball(folder)
    prepared = REPO / ".device" / "wheels"
    if any(prepared.glob("omegaconf-*.whl")) and any(prepared.glob("airbench-*.whl")):
        (folder / "wheels").symlink_to(prepared)
        return folder
    made = subprocess.run([str(REPO / "bench" / "device_prepare.sh")], capture_output=True, text=True,
                          env={**os.environ, "DEVICE_DIR": str(folder), "PYTHON": sys.executable,
                               "CIFARLAB_JPEG_TARBALL": str(tarball)})
    if made.returncode != 0:
        pytest.skip(f"could not prepare the carried folder (no package index?): {made.stderr.strip()[-300:]}")
    return folder


def test_the_device_check_runs_end_to_end_on_the_cpu_with_the_devices_packages(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "OUT")}
    env.update(DEVICE_DIR=str(carried_folder(tmp_path)), DEVICE_WORK=str(tmp_path / "work"),
               OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    result = subprocess.run([str(REPO / "bench" / "device_rehearsal.sh"), "--tiny-per-class", str(PER_CLASS)],
                            capture_output=True, text=True, env=env, timeout=600)
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
