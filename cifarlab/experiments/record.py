"""A sweep's record, ``<train.output_dir>/<name>/sweep.yaml``: every trial its sweep file has ever listed (index,
name, settings, command) and each version of the file (when, base, shared overrides, which trials it listed), after
a digest of both (a record cut short or edited is refused, not read as another).

Reading a sweep again matches the file's trials to the recorded ones (:func:`match`), so a trial keeps its index
and its name when the file grows or shrinks; new trials get the indices after the recorded ones. A record whose
shared settings would train differently (:func:`check_same_sweep`) belongs to another sweep of the same name and is
refused. Imports no torch."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from cifarlab.config import Config, flatten, load_config, shown, to_dict
from cifarlab.errors import UsageError
from cifarlab.files import typed
from cifarlab.identity import run_changes

VERSION_KEYS = ("base", "overrides", "trials")
"""What makes a new version of the sweep file (the time and the file's path do not)."""


@dataclass(frozen=True)
class Trial:
    index: int
    """Its place in the sweep (``--trial``, SLURM array task ids): the file's order when the sweep first runs;
    kept when the file changes, and trials added later come after every recorded one."""
    name: str
    settings: tuple[str, ...]
    """Its own ``key=value`` overrides (trials, grid values, seed), in that order."""


@dataclass(frozen=True)
class Record:
    path: Path
    trials: tuple[Trial, ...]
    """Every trial any version of the file listed, by index, with the name and settings last recorded."""
    commands: dict[int, str]
    """Each trial's trainer command as last recorded, by index."""
    versions: tuple[dict[str, Any], ...]
    """``{version, time, source, base, overrides, trials: [indices]}`` for each version of the file, oldest first."""

    @property
    def count(self) -> int:
        """One more than the highest index: where new trials start."""
        return 1 + max((trial.index for trial in self.trials), default=-1)

    def mapping(self) -> dict[int, tuple[str, tuple[str, ...]]]:
        return {trial.index: (trial.name, trial.settings) for trial in self.trials}


def read_record(path: Path) -> Optional[Record]:
    """The record at ``path``; None where there is none yet. A record written before versions were kept counts as
    one version, whose shared overrides are unknown."""
    if not path.is_file():
        return None
    problem = f"{typed(path)}: not a sweep record; move it away or give the sweep another name"
    try:
        document = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # PyYAML's errors (yaml is not imported here) and OmegaConf's
        raise UsageError(problem) from None
    if not isinstance(document, dict) or not isinstance(document.get("trials"), list):
        raise UsageError(problem)
    if "digest" in document and document["digest"] != _digest(document["trials"], document.get("versions")):
        raise UsageError(f"{typed(path)}: not the record as cifarlab wrote it (cut short, damaged or edited: its "
                         f"digest differs); restore it, or remove it to name the trials afresh from the sweep file")
    trials, commands = [], {}
    try:
        for entry in document["trials"]:
            trials.append(Trial(int(entry["index"]), str(entry["name"]), tuple(str(s) for s in entry["overrides"])))
            commands[trials[-1].index] = str(entry.get("command", ""))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UsageError(problem) from None
    versions = document.get("versions")
    if isinstance(versions, list) and not all(isinstance(v, dict) and isinstance(v.get("trials", []), list)
                                              for v in versions):
        raise UsageError(problem)
    if not isinstance(versions, list) or not versions:
        versions = [{"version": 1, "time": None, "source": document.get("source"), "base": document.get("base"),
                     "overrides": None, "trials": [trial.index for trial in trials]}]
    return Record(path, tuple(sorted(trials, key=lambda t: t.index)), commands, tuple(versions))


def check_same_sweep(record: Record, name: str, shared: Config, swept: Collection[str]) -> None:
    """Refuse a record of another sweep named ``name``: one whose base and overrides (its last version's) would
    train differently from the base and overrides now (``shared``, their config) in a key that is not ``swept``,
    now or then. The trainer's identity rule decides what is another run (cifarlab.identity.run_changes). Where
    the record's base and overrides no longer load (its base moved away), nothing is compared: each trial's run
    directory is still checked before the trial runs."""
    last = record.versions[-1]
    if not isinstance(last.get("overrides"), list):
        return  # a record from before versions were kept: its trials are matched as they are
    try:
        theirs = load_config(last.get("base"), [str(item) for item in last["overrides"]],
                             overrides_from=str(record.path))  # another's record: nothing in it is resolved
    except UsageError:
        return
    changes = run_changes(theirs, shared).refused
    keys = [key for key in changes if key not in swept]
    if keys:
        detail = ", ".join(f"{key}: {shown(changes[key][0])} there, {shown(changes[key][1])} here" for key in keys[:3])
        raise UsageError(f"{typed(record.path)} records another sweep named '{name}' ({detail}); rename this one "
                         f"(name:) or set another train.output_dir")


def changes(saved: Config, now: Config, swept: Collection[str]) -> dict[str, tuple[Any, Any]]:
    """What makes ``now`` another trial than the run of ``saved``, ``{key: (saved value, value now)}`` in schema
    order: what the trainer's resume rule refuses (cifarlab.identity.run_changes), and any change of a ``swept`` key.
    The keys the grid, trials and seeds set are what tells one trial from another, so they are its identity even
    where a run may change them (data.root; anything under train.allow_changes=true): a finished run of another
    swept value is never this trial's. Every decision that a run directory is a trial's goes by this."""
    found = run_changes(saved, now)
    prefixes = tuple(f"{key}." for key in swept)
    differing = {**{key: pair for key, pair in {**found.volatile, **found.recorded}.items()
                    if key in swept or key.startswith(prefixes)}, **found.refused}
    return {key: differing[key] for key in flatten(to_dict(now)) if key in differing}


def absolute(base: Optional[str]) -> Optional[str]:
    """A version's base: absolute, so it loads (and reads the same) from any directory."""
    return str(Path(base).resolve()) if base is not None else None


def match(record: Record, trials: Sequence[Trial], same: Callable[[Trial, Trial], bool]) -> dict[int, Trial]:
    """The recorded trial of each of ``trials`` (by the trial's index) that the record lists: the one with the same
    settings, else the first that ``same(recorded, trial)`` calls the same configuration. One each."""
    left = list(record.trials)
    found: dict[int, Trial] = {}
    for trial in trials:
        hit = next((old for old in left if set(old.settings) == set(trial.settings)), None)
        if hit is not None:
            found[trial.index] = hit
            left.remove(hit)
    for trial in trials:
        hit = None if trial.index in found else next((old for old in left if same(old, trial)), None)
        if hit is not None:
            found[trial.index] = hit
            left.remove(hit)
    return found


def document(record: Optional[Record], name: str, trials: Sequence[Trial], commands: dict[int, str],
             version: dict[str, Any]) -> dict[str, Any]:
    """The record to write: ``trials`` (all of them, the file's and those it no longer lists) with their
    ``commands``, and the versions of ``record`` plus ``version`` (source, base, overrides, trials) where it
    differs from the last one."""
    versions = list(record.versions) if record is not None else []
    if not versions or any(versions[-1].get(key) != version[key] for key in VERSION_KEYS):
        versions.append({"version": len(versions) + 1, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **version})
    entries = [{"index": t.index, "name": t.name, "overrides": list(t.settings), "command": commands[t.index]}
               for t in sorted(trials, key=lambda t: t.index)]
    # The digest first: a YAML file cut short (inside a trial's name) can still read, as another record.
    return {"digest": _digest(entries, versions), "name": name, "trials": entries, "versions": versions}


def _digest(trials: Any, versions: Any) -> str:
    """SHA-256 of a record's trials and versions (records from before it have none, and are read as they are)."""
    return hashlib.sha256(json.dumps([trials, versions], sort_keys=True, default=str).encode()).hexdigest()
