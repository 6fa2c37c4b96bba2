"""A run's identity: which config keys make a run the experiment it is (all but :data:`VOLATILE`), how a start's
config differs from its run's config.yaml (:func:`run_changes`: the rule the trainer and the sweep hold every run
directory to), and the overrides one config differs from another by (:func:`differences`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cifarlab.config import Config, flatten, shown, to_dict


def differences(config: Config, base: Config, leaving_out: tuple[str, ...] = ()) -> list[str]:
    """``key=value`` for each leaf of ``config`` that differs from ``base`` (e.g. its preset), in schema order, less
    the keys (or section prefixes) ``leaving_out`` (e.g. :data:`BOOKKEEPING`)."""
    ours, theirs = flatten(to_dict(config)), flatten(to_dict(base))
    return [f"{key}={shown(value)}" for key, value in ours.items()
            if theirs.get(key) != value and not (leaving_out and key.startswith(leaving_out))]


VOLATILE = ("train.run_name", "train.output_dir", "train.resume", "train.allow_changes", "train.cpu_threads",
            "train.timeout_minutes", "train.eval_every_epoch", "train.test_every_epoch", "data.root", "data.download",
            "data.num_workers", "logging.", "checkpoint.")
"""Keys (or section prefixes) that say where and how a run is started, where its data is read from, what it
reports and when it saves, never what it computes: any start of a run may change them, unrecorded. Every other
key is the run's identity (cifarlab.run.loop and the sweep hold a run directory to it; compare never splits groups
by these keys, and counts runs of one identity once). README.md, docs/runs.md and docs/sweeps.md name exactly these
keys (tests/test_compare.py checks)."""

BOOKKEEPING = ("train.output_dir", "train.run_name", "train.resume", "logging.wandb.group", "logging.wandb.tags")
"""Volatile keys that say where a run goes and how W&B files it, which a sweep sets for each of its trials: the
trainer's ``config:`` line leaves them out (its run directory and W&B lines say where the run went), so that a
trial's line names only the settings it trains with beyond its preset."""


FIXED = ("optim.name",)
"""Keys no start of a run may change, not even with train.allow_changes: a checkpoint's optimizer state belongs to
its optimizer (SGD's momentum buffers are no AdamW moments)."""


@dataclass(frozen=True)
class RunChanges:
    """How a start's config differs from its run's config.yaml: {key: (saved value, value now)} by kind."""

    volatile: dict[str, tuple[Any, Any]]
    """Keys in VOLATILE: never a change of the run."""
    recorded: dict[str, tuple[Any, Any]]
    """Allowed, and recorded in history.jsonl: train.epochs where nothing depends on it (optim.schedule=none);
    with train.allow_changes=true, every change but those of :data:`FIXED`."""
    refused: dict[str, tuple[Any, Any]]
    """Another experiment: the start is refused."""


def run_changes(saved: Config, now: Config) -> RunChanges:
    """The identity rule for runs: how ``now`` differs from ``saved`` (the run's config.yaml), split into volatile,
    recorded and refused differences. Normalisation left null (the dataset's own) equals the values written out."""
    before, after = flatten(_resolved(saved)), flatten(_resolved(now))
    volatile: dict[str, tuple[Any, Any]] = {}
    recorded: dict[str, tuple[Any, Any]] = {}
    refused: dict[str, tuple[Any, Any]] = {}
    for key, value in after.items():
        if before.get(key) == value:
            continue
        if key.startswith(VOLATILE):
            kind = volatile
        elif ((now.train.allow_changes and key not in FIXED)
              or (key == "train.epochs" and saved.optim.schedule == "none")):
            kind = recorded  # onecycle and cosine are stretched over all epochs: there more epochs change the course
        else:
            kind = refused
        kind[key] = (before.get(key), value)
    return RunChanges(volatile, recorded, refused)


def _resolved(config: Config) -> dict[str, Any]:
    """to_dict with data.mean/std resolved (null = the dataset's own): writing a default out is no change."""
    tree = to_dict(config)
    tree["data"]["mean"], tree["data"]["std"] = (list(values) for values in config.data.normalization())
    return tree
