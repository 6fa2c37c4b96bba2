"""Whether a checkpoint folder can be resumed from: intact (each file's size and SHA-256 as its manifest lists
them), safe (nothing torch's ``weights_only`` loader refuses: no pickled code is ever run) and of this model (its
tensors' names and shapes). Nothing here writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from safetensors.torch import load_file
from torch import nn

from cifarlab.run.rundir import MANIFEST, WEIGHTS, of_checkpoint


def sha256(path: Path) -> str:
    """A file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def problem(path: Path) -> Optional[str]:
    """Why the checkpoint at ``path`` cannot be resumed from, or None when it is intact."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable {MANIFEST} ({error})"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["size"]:
            return f"{name} has {file.stat().st_size} bytes, expected {expected['size']}"
        if sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def model_mismatch(folder: Path, model: nn.Module) -> Optional[str]:
    """How the model weights of checkpoint ``folder`` do not fit ``model``: its first tensor that is missing there,
    extra there, or of another shape; None when they fit (or the file does not read: loading it says why). Reads the
    file's header only."""
    from safetensors import SafetensorError, safe_open

    ours = {key: list(value.shape) for key, value in _bare(model).state_dict().items()}
    try:
        with safe_open(str(folder / WEIGHTS), "pt") as handle:
            theirs = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError):
        return None
    for key, shape in ours.items():
        if key not in theirs:
            return f"it has no tensor {key}"
        if theirs[key] != shape:
            return f"its tensor {key} is {theirs[key]}, the model's {shape}"
    extra = next((key for key in theirs if key not in ours), None)
    return f"its tensor {extra} is not in the model" if extra is not None else None


def _bare(model: nn.Module) -> nn.Module:
    """The model inside its wrappers (DistributedDataParallel's ``module``, torch.compile's ``_orig_mod``), whose
    tensor names the checkpoint's weights have. Unwrapped here, by what each wrapper holds: Accelerate's
    ``extract_model_from_parallel`` keeps a compiled wrapper unless told ``keep_torch_compile=False``, which
    accelerate 1.1 (the lowest declared) does not take."""
    while True:
        inner = getattr(model, "module", None) if isinstance(model, nn.parallel.DistributedDataParallel) else \
            getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def saved_model(folder: Path) -> str:
    """The model setting of the run a checkpoint folder belongs to, from its config.yaml, read as it is (nothing in a
    run folder is resolved)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    run = of_checkpoint(folder)
    try:
        written: Any = OmegaConf.to_container(OmegaConf.load(run.config), resolve=False) if run is not None else None
        return f"model.name={written['model']['name']}"
    except (OSError, ValueError, OmegaConfBaseException, KeyError, TypeError):
        return "a run whose config.yaml is not beside it"


def unloadable(folder: Path, pickled_only: bool = False) -> Optional[str]:
    """The first file of a checkpoint that does not load without executing code (torch's weights_only
    loader; safetensors unless ``pickled_only``), as ``name (why)``; None when all do."""
    from accelerate.utils import load  # torch.load(weights_only=True) with the numpy types RNG states hold

    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            if file.suffix == ".safetensors" and not pickled_only:
                load_file(str(file))
            elif file.suffix in (".bin", ".pkl", ".pt"):
                load(file, map_location="cpu")
        except Exception as error:  # any refusal names this file
            return f"{file.name} ({first_line(error)[:200]})"
    return None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
