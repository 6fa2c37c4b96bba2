"""Classification metrics from gathered (prediction, label, loss, logits) tensors.

Per-class numbers are computed from the gathered pairs, never by summing per-rank counts:
Accelerate pads the last batch with duplicates, which only ``gather_for_metrics`` removes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

TOP_K = 5
"""Top-k accuracy is reported beside top-1 for datasets with more than this many classes."""


@dataclass(frozen=True)
class EvalResult:
    count: int
    """Test images counted (each exactly once, whatever the process count)."""
    accuracy: float
    """Fraction of test images classified correctly."""
    loss: float
    """Mean cross-entropy over the test images (no label smoothing)."""
    per_class: dict[str, float]
    """Accuracy per class name (NaN for a class absent from the test set)."""
    per_class_count: dict[str, int]
    """Test images per class name."""
    confusion: list[list[int]]
    """confusion[true][predicted]: image counts, rows and columns in class order."""
    top5: Optional[float] = None
    """Fraction of test images whose true class is among the 5 highest logits; None with 5 classes or fewer
    (where it is always 1) or without logits."""
    per_class_top5: dict[str, float] = field(default_factory=dict)
    """Top-5 accuracy per class name, as ``per_class`` (empty when ``top5`` is None)."""
    examples: Optional[dict[str, torch.Tensor]] = field(default=None, repr=False, compare=False)
    """Per test image, in dataset order: ``labels``, ``predictions`` and ``logits`` (CPU tensors)."""

    @classmethod
    def from_predictions(cls, preds: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor,
                         classes: tuple[str, ...], logits: Optional[torch.Tensor] = None) -> EvalResult:
        preds, labels, losses = preds.cpu(), labels.cpu(), losses.cpu().double()
        correct = preds == labels
        num = len(classes)
        totals = torch.bincount(labels, minlength=num)
        hits = torch.bincount(labels[correct], minlength=num)
        count = int(labels.numel())
        confusion = torch.bincount(labels * num + preds, minlength=num * num).reshape(num, num)
        top5, per_class_top5 = None, {}
        if logits is not None and num > TOP_K:
            in_top = (logits.detach().cpu().topk(TOP_K, dim=1).indices == labels.view(-1, 1)).any(dim=1)
            top5 = float(in_top.sum()) / max(count, 1)
            per_class_top5 = _per_class(torch.bincount(labels[in_top], minlength=num), totals, classes)
        return cls(
            count=count,
            accuracy=float(correct.sum()) / max(count, 1),
            loss=float(losses.sum()) / max(count, 1),
            per_class=_per_class(hits, totals, classes),
            per_class_count={name: int(totals[i]) for i, name in enumerate(classes)},
            confusion=confusion.tolist(),
            top5=top5,
            per_class_top5=per_class_top5,
            examples=None if logits is None else {"labels": labels.long(), "predictions": preds.long(),
                                                  "logits": logits.detach().float().cpu()},
        )

    def values(self, split: str = "test") -> dict[str, Any]:
        """The evaluation's metrics under their recorded names, ``test/*`` or ``val/*`` as ``split`` says (see
        cifarlab.run.recorder)."""
        values: dict[str, Any] = {f"{split}/acc": self.accuracy}
        if self.top5 is not None:
            values[f"{split}/acc_top5"] = self.top5
        values.update({f"{split}/loss": self.loss, f"{split}/images": self.count})
        values.update({f"{split}/acc/{name}": acc for name, acc in self.per_class.items()})
        return values


def _per_class(hits: torch.Tensor, totals: torch.Tensor, classes: tuple[str, ...]) -> dict[str, float]:
    """hits / images per class name; NaN for a class absent from the test set."""
    return {name: (float(hits[i]) / int(totals[i]) if totals[i] else float("nan")) for i, name in enumerate(classes)}


@dataclass(frozen=True)
class EpochStats:
    loss: float
    """Mean training loss over the epoch's batches (all ranks), also across a mid-epoch resume: the checkpoint
    carries the sum (after resuming from a checkpoint of an older version: over the batches after the resume)."""
    batches: int
    """Training batches that ``loss`` and ``images_per_s`` cover: the whole epoch (see ``loss``)."""
    seconds: float
    """Wall seconds of training (not evaluation) in this epoch, summed over the segments of a resumed epoch (time
    lost to a crash after the last checkpoint not counted)."""
    images_per_s: float
    """Training images per second (global batch x batches / seconds)."""
    compile_seconds: Optional[float] = None
    """``train.compile``: host seconds of the first compiled training step of this start, in the epoch it fell in
    (included in ``seconds``); None otherwise."""

    def values(self) -> dict[str, float]:
        values = {"train/epoch_loss": self.loss, "train/epoch_images_per_s": self.images_per_s,
                  "train/epoch_seconds": self.seconds}
        if self.compile_seconds is not None:
            values["train/compile_seconds"] = self.compile_seconds
        return values
