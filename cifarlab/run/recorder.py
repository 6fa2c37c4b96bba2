"""One recorder for every metric of a run: a dict with one set of names, fanned out to W&B, metrics.jsonl
and the console.

Names (the same in W&B, metrics.jsonl and the benchmarks that read it):

    every logging.every_n_steps   train/loss, train/lr, train/images_per_s, train/epoch (fractional)
    after each evaluation         test/acc, test/acc_top5 (top-5 accuracy; datasets with more than 5
                                  classes), test/loss, test/images, test/acc/<class> (every class, also at
                                  100), train/epoch_loss, train/epoch_images_per_s, train/epoch_seconds,
                                  train/epoch; with train.compile, in the first epoch a start trains:
                                  train/compile_seconds (host seconds of the first compiled step).
                                  With a validation split (data.val_size > 0): val/acc, val/acc_top5,
                                  val/loss, val/images, val/acc/<class> every evaluation, and the test/*
                                  figures only in the last one (the last epoch's, or the one a run ends
                                  early at; every one with train.test_every_epoch)
    after an epoch not evaluated  train/epoch_loss, train/epoch_images_per_s, train/epoch_seconds, train/epoch
                                  (train.eval_every_epoch=false: only the last epoch is evaluated)

    when train.target_accuracy is reached   target/accuracy (the target), target/epoch, target/step,
                                  target/elapsed_s, target/train_seconds (also in the W&B summary)
    when a search prunes the run  prune/epoch, prune/step, prune/elapsed_s (also in the W&B summary)

metrics.jsonl holds one JSON object per record: ``step`` (the global step), ``time`` (unix seconds when it
was recorded), ``elapsed_s`` (wall seconds of the run so far, over all its segments) and the values (NaN as
null). An evaluation record is one with ``test/acc`` or ``val/acc``. The best checkpoint, ``best/accuracy`` (W&B
summary) and train.target_accuracy go by ``val/acc`` where there is a validation split, else by ``test/acc``.

At the end the recorder writes ``predictions.safetensors``: the final evaluated model's ``labels``,
``predictions`` (int64, one per test image in dataset order) and ``logits`` (float32), with metadata
``test_set`` (a digest of the test labels and data settings: the same digest means the same images in the
same order, so runs can be compared image by image) and ``classes`` (JSON). W&B gets the final weights
and ``best/`` as versions of one model artifact (aliases ``final`` and ``best``). Adding a
metric means adding it to the dict where it is computed (``EvalResult.values``, ``EpochStats.values`` or
:meth:`Recorder.train_step`); every sink takes it from there. The recorder owns the logging cadence.

Collectives (the loss average across ranks) run on every rank; writing happens on the main process only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from accelerate import Accelerator

from cifarlab import files
from cifarlab.config import DataConfig
from cifarlab.data.classes import FULL_TABLE
from cifarlab.report import console, plots
from cifarlab.report.metrics import EpochStats, EvalResult
from cifarlab.run import tracking
from cifarlab.run.rundir import MANIFEST, WEIGHTS, RunDir, read_metrics
from cifarlab.run.state import Pace, Stopwatch, TrainState
from cifarlab.run.verify import sha256

if TYPE_CHECKING:
    from cifarlab.data.path import DataPath


class Recorder:
    """Receives the run's metrics and media; see the module docstring for the names. It is given what it uses, not
    the config: the run's ``pace`` (its global batch and batches per epoch), ``epochs`` (train.epochs),
    ``every_n_steps`` (logging.every_n_steps) and the ``tracker`` that takes W&B's share
    (:func:`cifarlab.run.tracking.start`; by default none: metrics.jsonl and the console only) and
    ``per_class_every_epoch`` (logging.per_class_every_epoch: the per-class table after every evaluation, not only
    at the end, :meth:`final_table`)."""

    def __init__(self, accelerator: Accelerator, run: RunDir, out: console.Console, pace: Pace, epochs: int,
                 every_n_steps: int, tracker: Optional[tracking.Tracker] = None,
                 per_class_every_epoch: bool = False) -> None:
        self.accelerator = accelerator
        self.run = run
        self.out = out
        self.main = accelerator.is_main_process
        self._pace = pace
        self._epochs = epochs
        self._every_n_steps = every_n_steps
        self.tracker = tracker or tracking.Tracker()
        self._window = torch.zeros((), device=accelerator.device)  # loss summed on the device: no sync per step
        self._window_steps, self._window_start = 0, time.perf_counter()
        self._bar: Optional[console.EpochBar] = None
        self._previous: dict[str, EvalResult] = {}  # each split's last evaluation: the table shows the change
        self._before: dict[str, EvalResult] = {}  # each split's evaluation before that: the final table's change
        self._per_class_every_epoch = per_class_every_epoch  # logging.per_class_every_epoch
        self._clock = Stopwatch()  # the run's wall clock, from start()

    # --- start ----------------------------------------------------------------------------------------

    def start(self, state: TrainState) -> None:
        """Drop metrics.jsonl records past ``state`` (progress a stopped run lost, and a torn last line); the run's
        clock from here on is ``state``'s."""
        self._clock = state.wall
        if self.main and self.run.metrics.is_file():
            # Only an unfinished run gets here: a torn last line is a trainer killed while appending it.
            written = read_metrics(self.run.metrics, tail_may_be_torn=True)
            if written.torn is not None:
                self.out.note(f"{self.run.metrics}:{written.torn}: left out a torn last line (a trainer killed while "
                              f"writing it); the file is rewritten without it")
            kept = [line for line, record in zip(written.lines, written.records, strict=True)
                    if record["step"] <= state.global_step]
            files.write_whole(self.run.metrics, "".join(f"{line}\n" for line in kept))

    # --- the fan-out ----------------------------------------------------------------------------------

    def record(self, values: dict[str, Any], step: int) -> None:
        """One record: to W&B (unless it already has this step's successors) and to metrics.jsonl."""
        self.tracker.log(values, step)
        if self.main:
            line = {"step": step, "time": round(time.time(), 3), "elapsed_s": round(self._clock.read(), 3),
                    **{k: _json(v) for k, v in values.items()}}
            files.append(self.run.metrics, json.dumps(line) + "\n")

    # --- training -------------------------------------------------------------------------------------

    def epoch_bar(self, state: TrainState) -> AbstractContextManager[Any]:
        """The epoch's progress bar (a terminal) and a fresh window for the running loss."""
        self._window.zero_()
        self._window_steps, self._window_start = 0, time.perf_counter()
        self._bar = self.out.epoch_bar(f"epoch {state.epoch + 1}/{self._epochs}", self._pace.steps_per_epoch,
                                       state.step_in_epoch)
        return self._bar

    def train_step(self, state: TrainState, loss: torch.Tensor, lr: Callable[[], float]) -> None:
        """After each training batch; records every ``logging.every_n_steps`` steps (all ranks). ``lr`` is asked
        only then."""
        self._window += loss
        self._window_steps += 1
        if self._bar is not None:
            self._bar.update(state.step_in_epoch)
        if state.global_step % self._every_n_steps:
            return
        steps = self._pace.steps_per_epoch
        mean_loss = self.accelerator.reduce(self._window, reduction="mean").item() / self._window_steps
        images_per_s = self._pace.images_per_s(self._window_steps, time.perf_counter() - self._window_start)
        rate = lr()
        self.record({"train/loss": mean_loss, "train/lr": rate, "train/images_per_s": images_per_s,
                     "train/epoch": state.epoch + state.step_in_epoch / steps}, state.global_step)
        stats = f"loss {mean_loss:.4f} lr {rate:.5f} {images_per_s:,.0f} images/s"
        self.out.progress_line(f"epoch {state.epoch + 1} step {state.step_in_epoch}/{steps} {stats}")
        if self._bar is not None:
            self._bar.update(state.step_in_epoch, stats)
        self._window.zero_()
        self._window_steps, self._window_start = 0, time.perf_counter()

    def evaluation(self, state: TrainState, results: dict[str, EvalResult], stats: EpochStats) -> None:
        """After each epoch's evaluation (``state`` already past the epoch). ``results``: each split evaluated, by its
        recorded prefix: ``{"test": ...}`` without a validation split; with one ``{"val": ...}``, and ``"test"`` too
        after the last epoch (or every epoch with train.test_every_epoch)."""
        values: dict[str, Any] = {"train/epoch": float(state.epoch)}
        for split, result in results.items():
            values.update(result.values(split))
        self.record({**values, **stats.values()}, state.global_step)
        # One line, each figure once; the per-class table at the end of the run (final_table), or here on request.
        figures = "; ".join(console.accuracy_summary(result, split) for split, result in results.items())
        self._epoch_line(state, stats, figures)
        if self._per_class_every_epoch:
            split, shown = list(results.items())[-1]  # the table of the test set where it was evaluated
            self.out.eval_table(f"epoch {state.epoch}/{self._epochs}: {console.SPLITS[split]} accuracy per class",
                                shown, self._previous.get(split))
        self.tracker.summary({"best/accuracy": state.best_accuracy, "best/epoch": state.best_epoch})
        self._before.update({split: self._previous[split] for split in results if split in self._previous})
        self._previous.update(results)

    def final_table(self, result: EvalResult) -> None:
        """The end of the run: the final test evaluation per class, with the change since the test evaluation before
        it (where there was one); printed after the last evaluation already with logging.per_class_every_epoch."""
        last = self._previous.get("test")
        if self._per_class_every_epoch and result is last:
            return
        self.out.eval_table("test accuracy per class at the end of the run", result,
                            self._before.get("test") if result is last else last)

    def trained(self, state: TrainState, stats: EpochStats) -> None:
        """After an epoch that is not evaluated (``train.eval_every_epoch=false``; ``state`` already past it)."""
        self.record({"train/epoch": float(state.epoch), **stats.values()}, state.global_step)
        self._epoch_line(state, stats, "not evaluated (train.eval_every_epoch=false)")

    def _epoch_line(self, state: TrainState, stats: EpochStats, outcome: str) -> None:
        """An epoch's one console line: how it trained, then ``outcome`` (its evaluation's figures, or why none)."""
        self.out.log(f"epoch {state.epoch}/{self._epochs}: train loss {stats.loss:.4f}, {stats.images_per_s:,.0f} "
                     f"images/s over {stats.seconds:.1f}s; {outcome}")

    def target(self, state: TrainState) -> None:
        """``train.target_accuracy`` was reached at the evaluation just recorded (``state.target``)."""
        t = state.target
        assert t is not None
        self._ended_early(t, state.global_step, f"reached the target accuracy {100 * t['target/accuracy']:.2f} % at "
                          f"epoch {t['target/epoch']} (step {t['target/step']}) after {t['target/elapsed_s']:.1f}s "
                          f"({t['target/train_seconds']:.1f}s training)")

    def pruned(self, state: TrainState) -> None:
        """A search's pruner stopped the run at the evaluation just recorded (``state.pruned``)."""
        at = state.pruned
        assert at is not None
        self._ended_early(at, state.global_step, f"pruned by the search at epoch {at['prune/epoch']} (step "
                          f"{at['prune/step']}): its pruner expects no better result than other trials'")

    def _ended_early(self, where: dict[str, float], step: int, why: str) -> None:
        """The run ends before train.epochs: ``where`` to metrics.jsonl and the W&B summary, ``why`` to the console."""
        self.record(where, step)
        self.tracker.summary(where)
        self.out.log(f"{why}; finishing the run")

    # --- the end of the run ---------------------------------------------------------------------------

    def predictions(self, result: EvalResult, data: DataConfig, classes: tuple[str, ...]) -> None:
        """``predictions.safetensors``: the final evaluation, image by image (see the module docstring)."""
        if not self.main or result.examples is None:
            return
        from safetensors.torch import save_file

        examples = {name: tensor.contiguous() for name, tensor in result.examples.items()}
        metadata = {"test_set": test_set_digest(examples["labels"], data), "classes": json.dumps(list(classes))}
        with files.replacing(self.run.predictions) as tmp:
            save_file(examples, str(tmp), metadata=metadata)

    def model_artifact(self, state: TrainState) -> None:
        """The final weights and ``best/`` as versions of one W&B model artifact (call once the final weights
        are written). Each version holds the evaluated weights (the EMA with ``train.ema``) as
        model.safetensors, config.yaml and classes.json; metadata: the weights' SHA-256 and, for ``best``,
        that of the checkpoint's manifest (which holds every file's SHA-256)."""
        extra = [self.run.config, self.run.classes]
        self.tracker.log_model(lambda: self._final_weights(state), extra, ["final"])
        if (self.run.best / MANIFEST).is_file():
            self.tracker.log_model(lambda: self._best_weights(state), extra, ["best"])

    @contextlib.contextmanager
    def _final_weights(self, state: TrainState) -> Iterator[tuple[Path, dict[str, Any]]]:
        """The final weights and their metadata (made only for W&B: the SHA-256 reads the whole file)."""
        yield self.run.weights, {"sha256": sha256(self.run.weights), "epoch": state.epoch, "step": state.global_step}

    @contextlib.contextmanager
    def _best_weights(self, state: TrainState) -> Iterator[tuple[Path, dict[str, Any]]]:
        """``best/``'s evaluated weights as a model file like the final one (the checkpoint's average is keyed as
        torch's AveragedModel), and its metadata; the file is removed after (W&B has copied it to its staging
        area)."""
        from safetensors.torch import save_file

        from cifarlab.run.loading import evaluated_weights, model_weights

        best = self.run.best
        descriptor, temporary = tempfile.mkstemp(prefix=f"{files.TEMPORARY}artifact-{WEIGHTS}.",
                                                 dir=self.run.checkpoints)
        os.close(descriptor)
        weights = Path(temporary)
        try:
            save_file(model_weights(evaluated_weights(best)), str(weights), metadata={"format": "pt"})
            yield weights, {"sha256": sha256(weights), "manifest_sha256": sha256(best / MANIFEST),
                            "epoch": state.best_epoch, "accuracy": state.best_accuracy}
        finally:
            weights.unlink()

    # --- pictures (W&B only) --------------------------------------------------------------------------

    def training_images(self, data: DataPath, state: TrainState) -> None:
        """A grid of training images after augmentation: what the model sees."""
        def grid() -> dict[str, Any]:
            data.set_epoch(state.epoch)
            images, labels = data.sample(train=True, count=32)
            picture = plots.labelled_grid(images, labels, data.classes, *data.config.normalization())
            return {"media/train_images": tracking.image(picture, "training images after augmentation: what the "
                                                                  "model sees")}

        self.tracker.log_media(grid, state.global_step)

    def final_pictures(self, data: DataPath, predict: Callable[[torch.Tensor], torch.Tensor], state: TrainState,
                       result: EvalResult) -> None:
        """Test predictions (``predict(images)``: the labels the final model predicts, with train.tta) and the final
        evaluation's confusion matrix."""
        def pictures() -> dict[str, Any]:
            images, labels = data.sample(train=False, count=32)
            preds = predict(images).cpu()
            confusion, classes = result.confusion, data.classes
            many = len(classes) > FULL_TABLE  # the picture is then a superclass matrix and/or the most-confused pairs
            return {
                "media/test_predictions": tracking.image(
                    plots.labelled_grid(images, labels, classes, *data.config.normalization(), preds=preds),
                    "test images: prediction (true class), red where wrong"),
                "test/confusion_matrix": tracking.confusion_chart(confusion, classes),
                "media/confusion_matrix": tracking.image(
                    plots.confusion_image(confusion, classes),
                    "most-confused pairs (and superclasses)" if many else "rows: true class, columns: predicted"),
            }

        self.tracker.log_media(pictures, state.global_step)


def test_set_digest(labels: torch.Tensor, data: DataConfig) -> str:
    """Names a test set: its labels in order and what chose the images (not data.root: runs copied from
    another machine keep their digest)."""
    digest = hashlib.sha256(json.dumps([data.name, data.test_size, data.image_size]).encode())
    digest.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _json(value: Any) -> Any:
    """JSON has no NaN: a class absent from the test set has accuracy null."""
    return None if isinstance(value, float) and math.isnan(value) else value

