"""torch and torchvision come as a pair: each torchvision release is built against one torch release and one
build of it (CPU, a CUDA or ROCm version). A mismatched pair (torch 2.13.0+cpu beside a torchvision 0.28 built for
CUDA) fails inside ``import torchvision`` with ``operator torchvision::nms does not exist`` and a long traceback.
The package imports torchvision lazily, only where a run uses it (cifarlab/data; its import costs seconds of
start-up), so the commands call :func:`guard_torchvision` at start-up: wherever torchvision is then first imported,
a failure to load it is a UsageError of one line (exit 2) naming both versions and the command that mends it.

The guard is an import hook (a finder on ``sys.meta_path``): the official way to act on an import is the import
statement itself, but the statements live in the data wing, which may neither know the run's errors nor import
this. It changes nothing else: it asks the other finders for torchvision's spec, keeps their loader, and only runs
it inside the check, once."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import re
import sys
import types
from collections.abc import Sequence
from typing import Any, Optional

import torch

from cifarlab.errors import UsageError

TORCHVISION_MINOR_OFFSET = 15
"""torch 2.N pairs with torchvision 0.(N + 15): 2.0 with 0.15, 2.5 with 0.20, 2.13 with 0.28 (the pairs that
pytorch.org lists); the patch numbers go together (2.5.1 with 0.20.1)."""
WHEELS = "https://download.pytorch.org/whl"
"""PyTorch's own index: a build such as +cpu or +cu128 lives under its name there."""
LOAD_ERRORS = (ImportError, OSError, RuntimeError)
"""How a torchvision that does not fit this torch fails to load: a missing operator (RuntimeError), a symbol its
compiled part does not find (OSError, ImportError)."""


def guard_torchvision() -> None:
    """From now on, torchvision's first import in this process fails in one line where it does not load beside
    this torch (nothing to do where it is imported already)."""
    if "torchvision" not in sys.modules and not any(isinstance(f, _FirstImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _FirstImport())


class _FirstImport(importlib.abc.MetaPathFinder):
    """Finds torchvision as the other finders do and wraps its loader in the check."""

    def find_spec(self, name: str, path: Optional[Sequence[str]] = None,
                  target: Optional[types.ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if name != "torchvision":
            return None
        for finder in [f for f in sys.meta_path if f is not self and hasattr(f, "find_spec")]:
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Checked(spec.loader, self)
                return spec
        return None


class _Checked(importlib.abc.Loader):
    """torchvision's own loader, its ``exec_module`` (the import's work) inside the check; everything else its own."""

    def __init__(self, loader: Any, finder: _FirstImport) -> None:
        self.loader, self.finder = loader, finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[types.ModuleType]:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)  # once: the import is under way (the module is in sys.modules)
        try:
            self.loader.exec_module(module)
        except LOAD_ERRORS as error:
            raise UsageError(mismatch(torch.__version__, _installed("torchvision"), error)) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def mismatch(torch_version: str, torchvision_version: Optional[str], error: BaseException) -> str:
    """What went wrong and the fix, in one line: pip installs the torchvision built for ``torch_version``."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    found = (f"torchvision {torchvision_version} does not load beside torch {torch_version} ({reason}): the two must "
             f"be built for each other" if torchvision_version else f"torchvision is not installed (torch "
                                                                    f"{torch_version})")
    pin = matching(torch_version)
    fix = f"run `pip install {pin}`" if pin else f"install the torchvision release made for torch {torch_version}"
    return f"{found}; {fix}, or reinstall torch and torchvision together from the same index"


def matching(torch_version: str) -> Optional[str]:
    """pip's arguments for the torchvision that goes with ``torch_version`` (its build's index included); None for
    a torch outside the 2.x rule."""
    parsed = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)[^+]*(?:\+(\w[\w.]*))?", torch_version)
    if parsed is None or parsed.group(1) != "2":
        return None
    minor, patch, build = int(parsed.group(2)), parsed.group(3), parsed.group(4)
    pin = f"torchvision==0.{minor + TORCHVISION_MINOR_OFFSET}.{patch}"
    # ==0.28.0 is met by an installed 0.28.0+cu128 (PEP 440 ignores the local label), so pip would keep it: name
    # the build, or reinstall from the index torch came from (PyPI, for a torch without a build label).
    return f"{pin}+{build} --index-url {WHEELS}/{build}" if build else f"--force-reinstall --no-deps {pin}"


def _installed(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
