"""The run record: what a run ran on and with, written to ``environment.json`` at each start.

``environment.json`` is ``{"starts": [record, ...]}``, one record per start (the first start and each
resume), so a run resumed on other hardware or another version says so. A record holds the Python,
torch, torchvision, accelerate and wandb versions; CUDA and cuDNN versions and GPU names when there is a
GPU; the host; the process count and mixed precision; the command line; cifarlab's git commit and
whether the checkout had changes (when run from one); and the data fingerprint the tensor cache keys
on. The same record goes to W&B's run config under ``environment``. ``cifarlab.compare`` warns when
the runs it compares differ in it.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator

from cifarlab import files
from cifarlab.run.rundir import RunDir

CHECKOUT = Path(__file__).resolve().parents[2]
"""Where cifarlab runs from: its git checkout (``cifarlab/run/environment.py`` is two folders below it), or, for an
installed package, site-packages (no ``.git`` there)."""


def collect(accelerator: Accelerator, data_fingerprint: Optional[dict[str, str]]) -> dict[str, Any]:
    """This process's record (call on the main process: it runs git); ``data_fingerprint``: the data path's
    :meth:`~cifarlab.data.DataPath.source_keys`."""
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        **{name: _version(name) for name in ("torch", "torchvision", "accelerate", "wandb")},
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "host": socket.gethostname(),
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "device": accelerator.device.type,
        "command": list(sys.orig_argv),
        "git": _git(CHECKOUT),
        "data_fingerprint": data_fingerprint,
    }


def write(run: RunDir, record: dict[str, Any]) -> None:
    """Append ``record`` to the run's ``environment.json``."""
    starts: list[dict[str, Any]] = []
    if run.environment.is_file():
        try:
            starts = list(json.loads(run.environment.read_text()).get("starts", []))
        except (ValueError, AttributeError):
            starts = []  # unreadable: start the record again rather than fail the run
    files.write_whole(run.environment, json.dumps({"starts": [*starts, record]}, indent=2) + "\n")


def last_process_count(run: RunDir) -> Optional[int]:
    """The process count of the run's latest start, from its record; None before the first."""
    try:
        starts = json.loads(run.environment.read_text())["starts"]
        return int(starts[-1]["processes"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(checkout: Path) -> Optional[dict[str, Any]]:
    """The commit of the checkout cifarlab runs from and whether tracked files differ from it; None when
    cifarlab is installed from a package or git is missing. (``.git`` is a folder in a clone, a file in a git
    worktree.)"""
    if not (checkout / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(changes)}
