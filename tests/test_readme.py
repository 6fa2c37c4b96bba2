"""README.md's first 80 lines take a newcomer from nothing to a trained model on their own images: their commands
run verbatim, in a fresh folder holding a tiny image folder where the README's own-data example points."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, cli_env

pytestmark = pytest.mark.integration

NEWCOMER_LINES = 80
SHELL_FENCES = ("sh", "bash", "shell", "console")
# Not run here: installing packages (the test runs in an installed environment) and the test suite itself.
SKIPPED = ("pip install", "pytest")
CLASSES = ("cat", "dog", "bird")
TRAIN_PER_CLASS = 48  # 144 images: one default-preset batch of 128 fits, three epochs take seconds
TEST_PER_CLASS = 4


def newcomer_commands(text: str) -> list[str]:
    """The shell commands of the first NEWCOMER_LINES lines: each line of a ```sh (bash, shell, console) fence or of
    a block indented by 4 spaces, without comment-only lines; ```text and other fences are not commands."""
    commands, fence = [], None
    for line in text.splitlines()[:NEWCOMER_LINES]:
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence is not None:
            code = line if fence in SHELL_FENCES else ""
        else:
            code = line[4:] if line.startswith("    ") else ""
        if code.strip() and not code.lstrip().startswith("#"):
            commands.append(code.strip())
    return commands


def make_image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(1, count + 1):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) // 2 + 40 * label
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index:03d}.jpg")


def test_the_newcomer_commands_run_verbatim(tmp_path: Path) -> None:
    commands = newcomer_commands((REPO / "README.md").read_text())
    own_data = [command for command in commands if "data.name=imagefolder" in command]
    assert own_data and any(c.startswith(SKIPPED) for c in commands), commands  # the path a newcomer takes is there
    root = re.search(r"data\.root=(\S+)", own_data[0])
    assert root and not Path(root.group(1)).is_absolute(), own_data[0]  # a folder this test can create
    make_image_folder(tmp_path / root.group(1))
    for shared in ("configs", "launch"):  # the commands run from the repository root
        (tmp_path / shared).symlink_to(REPO / shared)
    # `python` and `accelerate` are this environment's, as after the README's install.
    env = cli_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for command in commands:
        if command.startswith(SKIPPED):
            continue
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, (f"{command}\nexit {result.returncode}\n{result.stdout[-2000:]}\n"
                                        f"{result.stderr[-3000:]}")
    assert (tmp_path / "runs" / "mine" / "model.safetensors").is_file()
