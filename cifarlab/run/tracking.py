"""Weights & Biases through Accelerate's tracker API: which mode, starting or continuing a run, what it is told.

:func:`start` gives the run's tracker: on the main process with W&B on a :class:`WandbTracker`, everywhere else the
no-op :class:`Tracker`, whose methods do nothing, so its callers never ask whether W&B is on. Everything W&B does runs
on the main process only (Accelerate's ``log`` is a no-op elsewhere). wandb itself is imported only when a run uses
it. :mod:`cifarlab.run.recorder` decides what is logged.
"""

from __future__ import annotations

import netrc
import os
import re
import shlex
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Optional

from accelerate import Accelerator

from cifarlab import files
from cifarlab.config import Config, WandbConfig, to_dict
from cifarlab.report import console
from cifarlab.run.rundir import RunDir, read_records

ModelVersion = Callable[[], AbstractContextManager[tuple[Path, dict[str, Any]]]]
"""Makes one version of a model artifact: the weights file and its metadata, while the context is open."""


def wandb_mode(config: WandbConfig) -> Optional[str]:
    """The W&B mode to run in, or None for no W&B at all."""
    if config.mode == "disabled":
        return None
    if config.mode != "auto":
        return config.mode
    return "online" if _has_wandb_credentials() else "offline"


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


class Tracker:
    """The no-op tracker (W&B off, or a process other than the main one): each method does nothing, so the recorder
    calls them without asking whether W&B is on. :class:`WandbTracker` does what they say."""

    def log(self, values: dict[str, Any], step: int) -> None:
        """``values`` at ``step``, unless W&B has this step's successors already."""

    def log_media(self, make: Callable[[], dict[str, Any]], step: int) -> None:
        """What ``make()`` returns (pictures, made only for W&B) at ``step``, as :meth:`log`."""

    def summary(self, values: dict[str, Any]) -> None:
        """``values`` into the run's summary."""

    def log_model(self, version: ModelVersion, extra: list[Path], aliases: list[str]) -> None:
        """One version of the run's model artifact, under ``aliases``: the weights and metadata ``version()`` makes
        (only for W&B), and the ``extra`` files."""


class WandbTracker(Tracker):
    """The live W&B run on the main process. After a resume the run redoes the steps since its checkpoint, which W&B
    may already have: ``logged`` is the highest step an earlier start logged (``wandb_step``; -1: none), and this
    start logs above it only (an exact resume recomputes the same values)."""

    def __init__(self, accelerator: Accelerator, run: Any, step_file: Path, logged: int, name: str) -> None:
        self.accelerator, self.run, self.step_file = accelerator, run, step_file
        self.model = "model-" + re.sub(r"[^A-Za-z0-9_.-]", "-", name)
        """The name of the run's model artifact."""
        self._step = logged  # highest step logged to W&B: it drops anything below
        self._floor = logged  # highest step an earlier start of this run logged: this start logs above it only

    def log(self, values: dict[str, Any], step: int) -> None:
        if step < self._step or step <= self._floor:
            return
        self.accelerator.log(values, step=step)
        if step > self._step:
            files.write_whole(self.step_file, str(step))  # whole or not at all: a resume reads it
        self._step = step

    def log_media(self, make: Callable[[], dict[str, Any]], step: int) -> None:
        self.log(make(), step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def log_model(self, version: ModelVersion, extra: list[Path], aliases: list[str]) -> None:
        with version() as (weights, metadata):
            _log_artifact(self.run, self.model, weights, extra, aliases, metadata)

    def where(self) -> str:
        return where(self.run)


def where(run: Any) -> str:
    """One line on where a live W&B run lives and how to upload it (a search's summary run says it too)."""
    if run.offline:
        folder = Path(run.dir).parent  # run.dir is the run's files/ folder
        shown = files.typed(folder)
        return f"W&B run files in {shown}; upload them with `wandb sync {shlex.quote(shown)}`"
    return f"W&B run {run.url}"


def start(accelerator: Accelerator, config: Config, run: RunDir, run_id: str, environment: Optional[dict[str, Any]],
          continuing: bool, out: console.Console) -> Tracker:
    """Start (or, with the same ``run_id``, continue) the W&B run whose files live in ``run``'s folder, and say where
    it is; its tracker. W&B's config: the resolved ``config``, ``environment`` (the run record) and the changes
    resumes of this run made (history.jsonl). Test metrics are charted against ``train/epoch`` (logged with them),
    training ones against the step."""
    logged = logged_step(run, out.note) if continuing else -1
    wandb = config.logging.wandb
    mode = wandb_mode(wandb)
    if mode is None:
        return Tracker()
    # A torn last line of history.jsonl is left out: the start that writes the next change repairs the file
    # (cifarlab.run.loop.note_changes).
    history = read_records(run.history, tail_may_be_torn=True).records
    name = config.train.run_name or run.root.name
    accelerator.init_trackers(
        wandb.project,
        config={**to_dict(config), "environment": environment, "history": history},
        init_kwargs={
            "wandb": {
                "mode": mode,
                "dir": str(run.root),
                "id": run_id,
                "resume": "allow",
                "name": wandb.name or name,
                "entity": wandb.entity,
                "group": wandb.group,
                "tags": list(wandb.tags) or None,
                "notes": wandb.notes,
                # W&B's banner and its history/summary at exit stay off the console: cifarlab prints one
                # line on where the files are. (Its offline banner ignores `quiet`: only `silent` stops it.)
                "settings": _silent_settings(),
            }
        },
    )
    live = _live_run(accelerator)
    if live is None:  # a process other than the main one
        return Tracker()
    live.define_metric("train/epoch")
    for split in ("test", "val"):  # both evaluated splits charted against the epoch
        live.define_metric(f"{split}/*", step_metric="train/epoch")
    tracker = WandbTracker(accelerator, live, run.wandb_step, logged, name)
    out.log(tracker.where())
    return tracker


def logged_step(run: RunDir, note: Callable[[str], None]) -> int:
    """The highest step an earlier start of ``run`` logged to W&B (``wandb_step``); -1 when none did. The file is
    replaced whole, so it is a number; where it is not (written by hand, or by an older version that was killed while
    writing it), -1 (W&B then ignores, with a warning, the steps it already has)."""
    if not run.wandb_step.is_file():
        return -1
    text = run.wandb_step.read_text(errors="replace").strip()
    if text.isdigit():
        return int(text)
    note(f"{run.wandb_step}: not a step number ({text[:20]!r}); W&B will ignore, with a warning, the steps it already "
         f"has")
    return -1


def _silent_settings() -> Any:
    import wandb

    return wandb.Settings(silent=True)


def finish(accelerator: Accelerator, exit_code: int) -> None:
    """Finish the W&B run with ``exit_code`` (a failed or stopped run), before ``end_training`` would finish it
    as a success; nothing where there is none."""
    live = _live_run(accelerator)
    if live is not None:
        live.finish(exit_code=exit_code)


def _live_run(accelerator: Accelerator) -> Any:
    """The live W&B run on the main process, else None: the one question whether W&B is on here."""
    if not accelerator.is_main_process or not any(t.name == "wandb" for t in accelerator.trackers):
        return None
    return accelerator.get_tracker("wandb", unwrap=True)


def _log_artifact(run: Any, name: str, weights: Path, extra: list[Path], aliases: list[str],
                  metadata: dict[str, Any]) -> None:
    """Log ``weights`` (as model.safetensors) and ``extra`` files as a version of model artifact ``name``.
    Offline the artifact is recorded in the run files and uploaded by `wandb sync`."""
    import wandb

    artifact = wandb.Artifact(name, type="model", metadata=metadata)
    artifact.add_file(str(weights), name="model.safetensors")
    for file in extra:
        artifact.add_file(str(file))
    run.log_artifact(artifact, aliases=aliases)


def image(picture: Any, caption: str) -> Any:
    """A PIL image as W&B media (call only when W&B is in use)."""
    import wandb

    return wandb.Image(picture, caption=caption)


def confusion_chart(confusion: list[list[int]], classes: tuple[str, ...]) -> Any:
    """W&B's interactive confusion matrix, from counts (rows: true class, columns: predicted)."""
    import wandb

    truth = [i for i, row in enumerate(confusion) for j, count in enumerate(row) for _ in range(count)]
    predicted = [j for row in confusion for j, count in enumerate(row) for _ in range(count)]
    return wandb.plot.confusion_matrix(y_true=truth, preds=predicted, class_names=list(classes),
                                       title="test confusion matrix")
