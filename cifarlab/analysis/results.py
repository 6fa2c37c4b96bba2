"""Read finished (and unfinished) run directories: config, evaluation records, target record, environment and
test predictions, as plain typed values. Reads files only; imports torch and safetensors only when
predictions are read.

    runs = [read_run(path) for path in find_runs(["runs/lr-sweep", "runs/exp1"])]
    runs[0].final_accuracy(), runs[0].config["optim.lr"], runs[0].env("torch")

What each file holds: cifarlab/run/rundir.py (the names) and cifarlab/run/recorder.py (metrics.jsonl's records).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cifarlab.errors import UsageError
from cifarlab.run.rundir import RunDir, read_metrics

if TYPE_CHECKING:
    import torch


class ResultsError(UsageError):
    """A path or file that cannot be read as a run."""


# --- metrics.jsonl ------------------------------------------------------------------------------------


def records(run_dir: Path, tolerate_torn_tail: bool = False) -> list[dict[str, Any]]:
    """Every record of a run's metrics.jsonl (logged steps and evaluations), in order; [] without the file.
    ``tolerate_torn_tail`` (an unfinished run): a last line that is not JSON, what a trainer killed mid-append
    leaves, is left out with a one-line note. Any other line that is not JSON raises :class:`ResultsError`."""
    path = RunDir(Path(run_dir)).metrics
    try:
        written = read_metrics(path, tail_may_be_torn=tolerate_torn_tail)
    except UsageError as error:
        raise ResultsError(str(error)) from None
    if written.torn is not None:
        from cifarlab.report.console import note

        note(f"{path}:{written.torn}: left out a torn last line (the run is unfinished: its trainer was killed, or "
             f"is still writing, mid-line)")
    return written.records


SPLITS = ("test", "val")
"""The evaluated splits, as metrics.jsonl names their figures (``test/acc``, ``val/acc``): with a validation split
(``data.val_size``) every evaluation scores it and the test set is scored at the end (cifarlab.run.recorder)."""


def is_evaluation(record: dict[str, Any]) -> bool:
    """An evaluation record: it scored the test set or the validation split (with a split, most hold ``val/*`` only)."""
    return any(f"{split}/acc" in record for split in SPLITS)


def is_target(record: dict[str, Any]) -> bool:
    """The record written when the run first reached ``train.target_accuracy``."""
    return "target/accuracy" in record


def evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluation records (those with ``test/acc`` or ``val/acc``) of a run's metrics.jsonl, in order."""
    return [record for record in records(run_dir) if is_evaluation(record)]


def per_class(record: dict[str, Any]) -> dict[str, Optional[float]]:
    """An evaluation record's test accuracy by class name (None for a class absent from the test set)."""
    prefix = "test/acc/"
    return {key[len(prefix):]: value for key, value in record.items() if key.startswith(prefix)}


# --- config.yaml and environment.json -------------------------------------------------------------------


def schema_defaults() -> dict[str, Any]:
    """The config schema's defaults as dotted keys."""
    from cifarlab.config import Config, flatten, to_dict

    return flatten(to_dict(Config()))


def read_config(path: Path) -> dict[str, Any]:
    """A run's config.yaml as dotted keys over the schema defaults: a run written before a key existed reads
    as having its default, and a key the schema has since dropped is kept as written. Not validated: a
    finished run's config is history, not input."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from cifarlab.config import flatten

    try:
        # Never resolved: ${oc.env:...} in a copied run's file would read this machine's environment into the table.
        written = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OmegaConfBaseException, OSError, ValueError, yaml.YAMLError, AssertionError) as error:  # YAML's own
        # (damaged text), OmegaConf's assertion on a file holding one string ('NO')
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ResultsError(f"{path}: not a readable config ({reason})") from None
    if not isinstance(written, dict):
        raise ResultsError(f"{path}: not a config (a YAML mapping of sections)")
    config = {**schema_defaults(), **flatten(written)}
    if config.get("train.mixed_precision") is False:  # YAML reads a bare `no` as false (see cifarlab.config)
        config["train.mixed_precision"] = "no"
    return config


def read_environment(path: Path) -> dict[str, Any]:
    """The first start's environment: environment.json holds one object, or ``{"starts": [object, ...]}`` (a
    resumed run), or a list of them. {} when the file is absent (runs from before it existed)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as error:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise ResultsError(f"{path}: not JSON ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("starts"), list):
        data = data["starts"]
    if isinstance(data, list):
        data = data[0] if data else {}
    return data if isinstance(data, dict) else {}


# --- a run ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictions:
    """The final evaluated model's answer for each test image (predictions.safetensors)."""

    labels: torch.Tensor
    """int64 [N]: true class of each test image, in dataset order."""
    predictions: torch.Tensor
    """int64 [N]: predicted class of each test image."""
    test_set: Optional[str]
    """Digest of the test set: equal digests mean the same images in the same order."""
    classes: list[str]

    def correct(self) -> torch.Tensor:
        """bool [N]: which test images the model classified correctly."""
        return self.predictions == self.labels


@dataclass(frozen=True)
class Run:
    """One run directory, read."""

    path: Path
    config: dict[str, Any]
    """The resolved config as dotted keys (``optim.lr``), schema defaults filled in."""
    evaluations: list[dict[str, Any]]
    """metrics.jsonl's evaluation records, in order."""
    target: Optional[dict[str, Any]]
    """The ``target/*`` record; None when the run did not reach (or had no) ``train.target_accuracy``."""
    environment: dict[str, Any] = field(default_factory=dict)
    """environment.json of the run's first start; {} when absent."""
    finished: bool = False
    """Whether the final weights were written (the last thing a run does)."""
    pruned: Optional[dict[str, Any]] = None
    """The ``prune/*`` record of a search's trial its pruner stopped (cifarlab.run.pruning); None otherwise."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def final(self) -> Optional[dict[str, Any]]:
        """The last evaluation record: the final model's (a resumed run drops records past its checkpoint)."""
        return self.evaluations[-1] if self.evaluations else None

    def last(self, split: str) -> Optional[dict[str, Any]]:
        """The last evaluation record that scored ``split`` (``test`` or ``val``): with a validation split the test
        set is scored at the end only, so the final model's test figures are in the last record that has them."""
        return next((r for r in reversed(self.evaluations) if f"{split}/acc" in r), None)

    def final_accuracy(self) -> Optional[float]:
        return _number(self.last("test"), "test/acc")

    def final_top5(self) -> Optional[float]:
        """Top-5 accuracy of the final evaluation (recorded for datasets with more than 5 classes)."""
        return _number(self.last("test"), "test/acc_top5")

    def best_accuracy(self) -> Optional[float]:
        return self._best("test")

    def _best(self, split: str) -> Optional[float]:
        """The highest accuracy on ``split`` over the evaluations that scored it."""
        values = [v for v in (_number(r, f"{split}/acc") for r in self.evaluations) if v is not None]
        return max(values) if values else None

    def test_images(self) -> Optional[int]:
        """How many test images the final evaluation scored."""
        return self.images("test")

    def images(self, split: str) -> Optional[int]:
        """How many images of ``split`` (``test`` or ``val``) the last evaluation of it scored."""
        count = _number(self.last(split), f"{split}/images")
        return int(count) if count else None

    def final_loss(self) -> Optional[float]:
        return _number(self.last("test"), "test/loss")

    def final_val_accuracy(self) -> Optional[float]:
        """The validation accuracy of the last evaluation (None without a validation split: data.val_size 0)."""
        return _number(self.last("val"), "val/acc")

    def best_val_accuracy(self) -> Optional[float]:
        """The best validation accuracy over the evaluations: the one the best checkpoint was chosen by."""
        return self._best("val")

    def final_val_loss(self) -> Optional[float]:
        return _number(self.last("val"), "val/loss")

    def time_to_target(self) -> Optional[float]:
        """Wall seconds from the start to the evaluation that reached the target (over resumed segments)."""
        return _number(self.target, "target/elapsed_s")

    def train_time_to_target(self) -> Optional[float]:
        """Seconds spent training (no evaluation, no start-up) until the target was reached."""
        return _number(self.target, "target/train_seconds")

    def images_per_s(self) -> Optional[float]:
        """Training throughput over the whole run: images / seconds summed over epochs (each epoch's rate
        weighted by its length; a plain mean of epoch rates when epoch lengths were not recorded)."""
        rates = [(_number(r, "train/epoch_images_per_s"), _number(r, "train/epoch_seconds")) for r in self.evaluations]
        timed = [(rate, seconds) for rate, seconds in rates if rate is not None and seconds]
        if timed:
            return sum(rate * seconds for rate, seconds in timed) / sum(seconds for _, seconds in timed)
        plain = [rate for rate, _ in rates if rate is not None]
        return sum(plain) / len(plain) if plain else None

    def per_class(self) -> dict[str, Optional[float]]:
        """The final evaluation's test accuracy by class name."""
        final = self.last("test")
        return per_class(final) if final else {}

    def env(self, key: str) -> Any:
        """A field of environment.json (first start); None when absent."""
        return self.environment.get(key)

    def has_predictions(self) -> bool:
        return RunDir(self.path).predictions.is_file()

    def predictions(self) -> Predictions:
        return read_predictions(RunDir(self.path).predictions)

    def predictions_digest(self) -> Optional[str]:
        """SHA-256 of predictions.safetensors' contents: its header (names, dtypes, shapes, offsets, metadata) with
        the keys sorted, then its tensor bytes (logits included). Equal digests: the same evaluation to the bit, one
        measurement. (safetensors writes the header's keys in a hash map's order, so two identical evaluations'
        files can differ in their bytes.) Reads bytes only, no torch; None without the file or when it is no
        safetensors file."""
        path = RunDir(self.path).predictions
        if not path.is_file():
            return None
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size > path.stat().st_size - 8:
                return None
            try:
                header = json.loads(handle.read(size))
            except ValueError:  # UnicodeDecodeError included
                return None
            digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


def _number(record: Optional[dict[str, Any]], key: str) -> Optional[float]:
    value = None if record is None else record.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_run(path: Path) -> Run:
    run_dir = RunDir(Path(path))
    finished = run_dir.finished()
    # An unfinished run may have been killed while appending its last record.
    found = records(run_dir.root, tolerate_torn_tail=not finished)
    return Run(
        path=run_dir.root,
        config=read_config(run_dir.config),
        evaluations=[r for r in found if is_evaluation(r)],
        target=next((r for r in found if is_target(r)), None),
        environment=read_environment(run_dir.environment),
        finished=finished,
        pruned=next((r for r in found if "prune/epoch" in r), None),
    )


def read_predictions(path: Path) -> Predictions:
    """predictions.safetensors: ``labels`` and ``predictions`` (the logits are not read), and the metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            labels, predictions = handle.get_tensor("labels"), handle.get_tensor("predictions")
    except Exception as error:  # safetensors raises its own error types for torn or foreign files
        raise ResultsError(f"{path}: not readable as predictions ({error})") from None
    if labels.shape != predictions.shape or labels.dim() != 1:
        raise ResultsError(f"{path}: labels {tuple(labels.shape)} and predictions {tuple(predictions.shape)} "
                           "must be two vectors of the same length")
    classes = json.loads(metadata["classes"]) if "classes" in metadata else []
    return Predictions(labels, predictions, metadata.get("test_set"), classes)


# --- finding runs ---------------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """A run directory: its config.yaml and at least one other file a run writes at its start or end.
    (config.yaml alone is not enough: W&B's ``wandb/*/files/`` holds one too.)"""
    run = RunDir(path)
    return run.config.is_file() and (run.metrics.is_file() or run.classes.is_file() or run.weights.is_file())


def find_runs(paths: Iterable[str]) -> list[Path]:
    """Run directories named by ``paths``: run directories themselves, folders holding runs at any depth (a
    sweep: ``runs/lr-vs-seed``), or glob patterns of either. Sorted by path, each once. Raises
    :class:`ResultsError` for a path that does not exist or holds no run."""
    found: dict[Path, None] = {}  # insertion-ordered set
    for pattern in paths:
        literal = Path(pattern)
        # The shell expands patterns itself; a quoted one (or one from a script) is expanded here.
        matches = ([literal] if literal.exists() or not any(c in pattern for c in "*?[")
                   else [Path(p) for p in sorted(glob.glob(pattern))])
        if not matches or not all(m.exists() for m in matches):
            raise ResultsError(f"{pattern}: no such file or directory")
        runs = [run for match in matches for run in _runs_under(match)]
        if not runs:
            raise ResultsError(f"{pattern}: holds no run directory (a folder with config.yaml and metrics.jsonl)")
        found.update((run, None) for run in runs)
    return sorted(found, key=str)


def _runs_under(path: Path) -> list[Path]:
    if is_run_dir(path):
        return [path]
    if not path.is_dir():
        return []
    runs: list[Path] = []
    for folder, subfolders, _ in os.walk(path):
        if is_run_dir(Path(folder)):
            runs.append(Path(folder))
            subfolders.clear()  # a run's own folders (checkpoints/, wandb/) hold no runs
        else:
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # .tmp-* and the like
    return runs


def read_runs(paths: Sequence[str]) -> list[Run]:
    return [read_run(path) for path in find_runs(paths)]
