"""cifarlab.run.versions: a torch/torchvision pair that does not load together is one line, exit 2, naming both
versions and the pip command that mends it; nothing is built or written first."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import pytest
import torch

from cifarlab.run.versions import matching, mismatch

from conftest import cli_env, error_lines, in_process, smoke

pytestmark = pytest.mark.unit

NMS = "operator torchvision::nms does not exist"


class Mismatched(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import torchvision`` fails as it does beside a torch it was not built for: found, then failing as it runs
    (its _meta_registrations register a fake for an operator the torch it sits beside never defined)."""

    def find_spec(self, name: str, path: Optional[Sequence[str]] = None,
                  target: object = None) -> Optional[importlib.machinery.ModuleSpec]:
        return importlib.util.spec_from_loader(name, self) if name.split(".")[0] == "torchvision" else None

    def exec_module(self, module: object) -> None:
        raise RuntimeError(f"{NMS}\n(and the rest of the traceback's story)")


@pytest.fixture
def mismatched(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Mismatched(), *sys.meta_path])


def test_the_line_names_both_versions_and_the_matching_torchvision() -> None:
    line = mismatch("2.13.0+cpu", "0.28.0+cu128", RuntimeError(f"{NMS}\nmore"))
    assert line == ("torchvision 0.28.0+cu128 does not load beside torch 2.13.0+cpu (operator torchvision::nms does "
                    "not exist): the two must be built for each other; run `pip install torchvision==0.28.0+cpu "
                    "--index-url https://download.pytorch.org/whl/cpu`, or reinstall torch and torchvision together "
                    "from the same index")
    assert matching("2.5.1") == "--force-reinstall --no-deps torchvision==0.20.1"  # PyPI's torch: PyPI's torchvision
    assert matching("2.14.1+cu130") == "torchvision==0.29.1+cu130 --index-url https://download.pytorch.org/whl/cu130"
    assert matching("3.0.0") is None and "release made for torch 3.0.0" in mismatch("3.0.0", None, ImportError())
    assert "torchvision is not installed" in mismatch("2.14.1", None, ModuleNotFoundError("No module"))


def test_a_run_says_it_in_one_line_where_it_first_imports_torchvision(mismatched: None, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    refused = in_process(smoke(tmp_path, "r"), capsys)  # fake data: torchvision's FakeData
    assert refused.returncode == 2 and error_lines(refused.stderr) == [refused.stderr.strip()]
    assert f"beside torch {torch.__version__} ({NMS})" in refused.stderr
    assert sorted(path.name for path in (tmp_path / "runs").rglob("*") if path.is_file()) == []  # nothing left


def test_the_trainer_says_it_once_and_writes_nothing(tmp_path: Path) -> None:
    """A real process: what Python, Accelerate and W&B print on the way out is part of what a person sees."""
    hook = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_versions import Mismatched; "
            f"sys.meta_path.insert(0, Mismatched()); from cifarlab.train import cli; sys.argv[0] = 'train'; cli()")
    result = subprocess.run([sys.executable, "-c", hook, *smoke(tmp_path, "r")], env=cli_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert error_lines(result.stderr) == [result.stderr.strip()] and NMS in result.stderr
    assert not (tmp_path / "runs").exists()


def test_the_guard_lets_a_good_pair_load_and_then_steps_aside() -> None:
    """In a fresh interpreter: torchvision's operators register once per process, so a second import of it in this one
    (after another test's) fails as a mismatch would (torch 2.10: 'already a kernel registered')."""
    script = """
import sys, torch
from cifarlab.run import versions
assert not any(name.split(".")[0] == "torchvision" for name in sys.modules)
versions.guard_torchvision()
versions.guard_torchvision()  # once
finders = len(sys.meta_path)
from torchvision.ops import nms
assert nms(torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2.1]]), torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
assert len(sys.meta_path) == finders - 1, "the guard stays installed after the import"
"""
    done = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
