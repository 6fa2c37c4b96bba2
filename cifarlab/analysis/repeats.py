"""Runs that are one measurement, counted once. CPU runs repeat bit for bit and ``train.seed`` defaults to 0, so two
runs of one configuration with one seed (a run started twice by hand, a sweep's seeds 1 and 2 beside a search's
confirmation on seeds 1 and 2) are the same measurement twice: counted twice they would halve its spread and double
its weight. Two runs are one measurement when they have the same identity (every config key outside
cifarlab.identity.VOLATILE, ``train.seed`` included) or the same predictions.safetensors bytes (the same evaluation to
the bit, whatever the configs say); the relation is closed over chains (a copy of a copy). Of each measurement the
run first in path order counts; merging what was merged changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cifarlab.analysis.results import Run
from cifarlab.identity import VOLATILE

SAME_CONFIG = "same configuration and seed"
SAME_PREDICTIONS = "identical predictions.safetensors"


@dataclass(frozen=True)
class Merged:
    """A run left out as a copy of a measurement another run holds."""

    run: Path
    kept: Path
    """The run that counts for the measurement: the first in path order."""
    reason: str
    """What it shares with another run of the measurement: SAME_CONFIG, SAME_PREDICTIONS, or both (", ")."""


def identity(run: Run) -> str:
    """The run's configuration as its identity: every key outside VOLATILE, the seed included, type-exact."""
    return json.dumps({key: value for key, value in run.config.items() if not key.startswith(VOLATILE)},
                      sort_keys=True)


def merge(runs: Sequence[Run]) -> tuple[list[Run], list[Merged]]:
    """The runs that count (one per measurement, in path order) and the copies left out."""
    ordered = sorted(runs, key=lambda run: str(run.path))
    owner = list(range(len(ordered)))  # union-find: each run towards the first run of its measurement

    def root(i: int) -> int:
        while owner[i] != i:
            i = owner[i]
        return i

    first: dict[tuple[str, str], int] = {}
    shared: dict[int, list[str]] = {}
    for i, run in enumerate(ordered):
        for reason, key in ((SAME_CONFIG, identity(run)), (SAME_PREDICTIONS, run.predictions_digest())):
            if key is None:
                continue
            j = first.setdefault((reason, key), i)
            if j != i:
                for k in (i, j):
                    shared.setdefault(k, []).append(reason)
                low, high = sorted((root(i), root(j)))
                owner[high] = low
    kept = [run for i, run in enumerate(ordered) if root(i) == i]
    merged = [Merged(run.path, ordered[root(i)].path, ", ".join(dict.fromkeys(sorted(shared[i]))))
              for i, run in enumerate(ordered) if root(i) != i]
    return kept, merged
