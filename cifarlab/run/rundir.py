"""The map of a run directory: every file and folder a run writes, named in one place, and how each survives a
trainer killed while writing it (``whole``: replaced atomically by cifarlab.files, a kill leaves the old file;
``appended``: a kill leaves at most a torn last line, which readers leave out and the next start removes).

    runs/<run_name>/
      config.yaml          the resolved config; whole, by the first start only
      classes.json         class names by label index; whole
      metrics.jsonl        one JSON object per logged step and per evaluation (see cifarlab.run.recorder); appended,
                           and rewritten whole by each start (without the records past its checkpoint)
      model.safetensors    final weights (written last: its presence means the run finished); saved into a new
                           folder and renamed into place, so a kill never leaves a partial file that says finished
      predictions.safetensors  the final evaluated model's test predictions (see cifarlab.analysis.results); whole
      environment.json     versions, hardware, command line and git commit of each start (see
                           cifarlab.run.environment); whole
      history.jsonl        allowed changes to config.yaml's settings and the process count, by start; appended
      .lock                held by the run's trainer while it runs (see cifarlab.run.runlock); rewritten in place
                           by its holder only (a half-written holder line reads as "holder unknown")
      wandb/               the W&B run files (W&B's own)
      wandb_step           the highest step logged to W&B; whole
      checkpoints/         step_XXXXXXXX/ folders (written as .tmp-step_XXXXXXXX/, sealed, renamed), best/ (a
                           hard-linked copy, swapped in by renames) and `latest` (whole)
      .tmp-*               what a killed write left; removed by the next start

A checkpoint folder holds Accelerate's files plus :data:`TRAINER_STATE`, :data:`EMA_WEIGHTS` (with
``train.ema``) and :data:`MANIFEST`. The trainer writes no symbolic links and refuses to start in a run directory
that holds one (:func:`planted_link`). Nothing here imports torch: the CLI's fast paths use it too.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cifarlab import files
from cifarlab.errors import UsageError

WEIGHTS = "model.safetensors"
"""Final weights in a run directory; Accelerate's name for the model in a checkpoint folder too."""
PREDICTIONS = "predictions.safetensors"
"""Per-test-image results of the final evaluated model in a run directory."""
EMA_WEIGHTS = "ema.safetensors"
"""The weight average (``train.ema``) in a checkpoint folder."""
TRAINER_STATE = "trainer_state.json"
"""The trainer's position (epoch, step, best accuracy, W&B run id) in a checkpoint folder."""
MANIFEST = "manifest.json"
"""Each file's size and SHA-256 in a checkpoint folder, written last."""
STEP_PREFIX = "step_"
LATEST = "latest"
BEST = "best"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run. ``RunDir(Path("runs/exp1")).metrics`` etc.; creates nothing."""

    root: Path

    @classmethod
    def of(cls, output_dir: str, run_name: str) -> RunDir:
        return cls(Path(output_dir) / run_name)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def classes(self) -> Path:
        return self.root / "classes.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    def finished(self) -> bool:
        """Whether the run completed (its final weights are written after everything else)."""
        return self.weights.is_file()

    @property
    def lock(self) -> Path:
        """Held by the trainer of this run while it runs (see cifarlab.run.runlock)."""
        return self.root / ".lock"

    @property
    def history(self) -> Path:
        """One JSON line per start that changed a setting allowed to change on resume (or the process count)."""
        return self.root / "history.jsonl"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def wandb_step(self) -> Path:
        return self.root / "wandb_step"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        """A text file naming the newest complete checkpoint folder."""
        return self.checkpoints / LATEST

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    def checkpoint(self, global_step: int) -> Path:
        return self.checkpoints / f"{STEP_PREFIX}{global_step:08d}"

    def step_checkpoints(self) -> list[Path]:
        """Published step checkpoints, oldest first (temporary folders and best/ are not listed)."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir()
                 if p.is_dir() and p.name.startswith(STEP_PREFIX) and p.name[len(STEP_PREFIX):].isdigit()]
        return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))

    def holds_a_run(self) -> bool:
        """Whether a run has saved anything here that a new run would overwrite."""
        return bool(self.step_checkpoints()) or self.weights.exists()


def of_checkpoint(folder: Path) -> Optional[RunDir]:
    """The run a checkpoint folder (``<run>/checkpoints/<name>``) belongs to; None for any other folder."""
    return RunDir(folder.parent.parent) if folder.parent.name == "checkpoints" else None


def resume_command(run: RunDir, *overrides: str) -> str:
    """The command that continues ``run``: the trainer on the run's own config.yaml (the resolved experiment, its
    output directory and name included; a preset given again without the overrides it was started with would differ
    from it, and be refused) with ``train.resume=auto``, or ``overrides`` instead (as shell words: quoted by the
    caller where needed). Under a launcher (``accelerate
    launch``, torchrun) its options are the user's to repeat: ``<launch options>``. Run it where the run was
    started: the run's paths are as it was given them."""
    launched = any(name in os.environ for name in ("ACCELERATE_DYNAMO_BACKEND", "TORCHELASTIC_RUN_ID"))
    trainer = "accelerate launch <launch options> -m cifarlab.train" if launched else "python -m cifarlab.train"
    return " ".join([trainer, "--config", shlex.quote(files.typed(run.config)), *(overrides or ["train.resume=auto"])])


def planted_link(run: RunDir) -> Optional[Path]:
    """The first symbolic link among the run's files and folders (the run directory's entries, checkpoints/'s and
    each checkpoint folder's; W&B's own files under wandb/ are W&B's); None when there is none. The trainer creates
    no links, so one there was put there by someone else (a copied or shared run folder) and would be written
    through (cifarlab.files). The run directory itself and train.output_dir may be links."""
    folders = [run.root]
    if run.checkpoints.is_dir() and not run.checkpoints.is_symlink():
        folders += [run.checkpoints, *(p for p in run.checkpoints.iterdir() if p.is_dir() and not p.is_symlink())]
    for folder in folders:
        found = sorted(entry for entry in folder.iterdir() if entry.is_symlink()) if folder.is_dir() else []
        if found:
            return found[0]
    return None


@dataclass(frozen=True)
class Metrics:
    """A JSON-lines file of the run (metrics.jsonl, history.jsonl), read: its records in order, each with the line it
    was read from."""

    records: list[dict[str, Any]]
    lines: list[str]
    """The JSON text of each record, as written."""
    torn: Optional[int] = None
    """The number of a last line that was not JSON and was left out (a trainer killed while appending it); None
    when there was none."""


def read_records(path: Path, tail_may_be_torn: bool) -> Metrics:
    """The records of an append-only JSON-lines file of a run, metrics.jsonl or history.jsonl (empty without the
    file): each line a JSON object with an integer ``step``. ``tail_may_be_torn`` (an unfinished run): a last line
    that is not JSON is what a trainer killed mid-append leaves, and is left out (:attr:`Metrics.torn` says so). Any
    other line that is not such a record is damage and raises :class:`UsageError` naming it."""
    if not path.is_file():
        return Metrics([], [])
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if tail_may_be_torn and number == len(lines):
                return Metrics(records, lines[:-1], torn=number)
            where = "its last line, in a finished run" if number == len(lines) else "not its last line"
            raise UsageError(f"{path}:{number}: not a JSON record ({line[:60]!r}; {where}): the file is damaged; "
                             f"repair or delete that line") from None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise UsageError(f"{path}:{number}: not a record (a JSON object with an integer \"step\"): {line[:60]!r}; "
                             f"the file is damaged; repair or delete that line")
        records.append(record)
    return Metrics(records, lines)


read_metrics = read_records
"""metrics.jsonl's reader (the name its readers import)."""


def drop_torn_tail(path: Path, note: Callable[[str], None]) -> None:
    """Rewrite a run's JSON-lines file (history.jsonl) without a torn last line, saying so in one ``note``: the next
    line appended would otherwise continue it. Call under the run's lock."""
    written = read_records(path, tail_may_be_torn=True)
    if written.torn is not None:
        note(f"{path}:{written.torn}: left out a torn last line (a trainer killed while writing it); the file is "
             f"rewritten without it")
        files.write_whole(path, "".join(f"{line}\n" for line in written.lines))
