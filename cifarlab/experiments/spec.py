"""Sweep files: reading and checking one (keys, base preset, overrides, trials, grid, seeds, launcher options) and
expanding it into trials, each with its overrides, its short filesystem-safe name and its trainer command line
(docs/sweeps.md has the file format); a trial the sweep's record lists keeps its recorded index and name. Imports no
torch: every trial's config is checked with the config loader, and two trials of one configuration are refused."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from cifarlab.analysis.sweepdir import SweepDir, read_yaml
from cifarlab.config import SEED_LIMIT, Config, flatten, load_config, refuse_resolvers, to_dict, with_run_name
from cifarlab.errors import UsageError
from cifarlab.experiments.launching import check_launch, launch_list
from cifarlab.experiments.record import Record, Trial, changes, check_same_sweep, match, read_record
from cifarlab.experiments.space import Search, evaluated, read_search
from cifarlab.run.rundir import RunDir

FILE_KEYS = ("name", "base", "overrides", "trials", "grid", "seeds", "search", "launch")
SET_BY_SWEEP = ("train.run_name", "train.resume")
"""Keys the sweep sets for every trial: a sweep file or command line that sets them is refused."""
PER_TRIAL = ("train.run_name", "train.resume", "train.output_dir", "logging.wandb.tags")
"""Config keys the sweep sets for each trial from its name and settings: not part of what a trial trains."""
NOT_SWEPT = ("train.output_dir",)
"""Keys that may be set for all trials but not per trial (all trials live in one folder)."""
SEED = "train.seed"
TRAINER = ("-m", "cifarlab.train")  # what python runs for a trial; tests name a stand-in (cifarlab.sweep --trainer)
WANDB_TAG_LENGTH = 64  # W&B refuses longer tags
NAME_LENGTH = 120  # folder names stay well under the usual 255-byte limit


# --- the sweep file -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    name: str
    source: Path
    base: Optional[str]
    """The --config of every trial, as found (see :func:`_find_base`)."""
    common: tuple[str, ...]
    """``key=value`` overrides of every trial: the file's, then the command line's."""
    launch: tuple[str, ...]
    """``accelerate launch`` options (those cifarlab.experiments.launching allows); none: no launcher."""
    folder: Path
    """``<train.output_dir>/<name>``: the trials' run directories, sweep.yaml and logs/."""
    trials: tuple[Trial, ...]
    """The trials the file lists, by index."""
    removed: tuple[Trial, ...] = ()
    """Trials the sweep's record lists that the file no longer does, by index (their run directories stay)."""
    history: Optional[Record] = field(default=None, repr=False)
    """The sweep's record as it was read (None before the sweep first ran)."""
    configs: dict[int, Config] = field(default_factory=dict, repr=False)
    """Each trial's resolved config, by index (every one loaded, hence checked, when the sweep is read; a search's
    as its trials are sampled)."""
    search: Optional[Search] = None
    """The ``search:`` section: trials are sampled by a study (cifarlab.experiments.study), not listed."""
    swept: frozenset[str] = frozenset()
    """The keys the grid, trials and seeds set, now or in the sweep's record (a search's: its space): a trial's
    identity, whatever the trainer's resume rule lets one run change (cifarlab.experiments.record.changes)."""
    trainer: tuple[str, ...] = TRAINER  # from the command line only: a sweep file names no program to run

    @property
    def dir(self) -> SweepDir:
        return SweepDir(self.folder)

    def run_dir(self, trial: Trial) -> RunDir:
        return self.dir.run(trial.name)

    def log(self, trial: Trial) -> Path:
        return self.dir.log(trial.name)

    def outcome(self, trial: Trial) -> Path:
        """How the trial's last attempt under a sweep ended (JSON, see cifarlab.experiments.runner)."""
        return self.dir.outcome(trial.name)

    @property
    def count(self) -> int:
        """One more than the highest index (the size of a SLURM array over all trials)."""
        return 1 + max((trial.index for trial in (*self.trials, *self.removed)), default=-1)

    @property
    def record(self) -> Path:
        return self.dir.record

    def overrides(self, trial: Trial) -> list[str]:
        """Everything after the trainer's --config: common, the trial's own, then where and how it runs."""
        tags = [setting[:WANDB_TAG_LENGTH] for setting in trial.settings]
        wandb = [f"logging.wandb.group={_text(self.name)}", f"logging.wandb.tags={_text(tags)}"]
        # An explicit group or tags in the sweep's overrides win over the sweep's own.
        wandb = [item for item in wandb if not any(_key(c) == _key(item) for c in self.common)]
        common = [item for item in self.common if _key(item) != "train.output_dir"]  # replaced by the folder
        return [*common, *trial.settings, f"train.output_dir={_text(str(self.folder))}",
                f"train.run_name={_text(trial.name)}", "train.resume=auto", *wandb]

    def command(self, trial: Trial) -> list[str]:
        trainer = [*self.trainer, *(["--config", self.base] if self.base else []), *self.overrides(trial)]
        if self.launch:
            return [sys.executable, "-m", "accelerate.commands.launch", *self.launch, *trainer]
        # One process needs no launcher, and Accelerate's one-process launcher would not pass signals on.
        return [sys.executable, *trainer]


def read_sweep(path: str, overrides: Sequence[str] = (), launch: Sequence[str] = (),
               seeds: Optional[Sequence[int]] = None, trainer: tuple[str, ...] = TRAINER) -> Sweep:
    """The sweep in ``path`` with extra ``overrides`` and launcher options for every trial; every trial's
    config is loaded, so a bad key or value in any of them fails here, before anything runs. Where the sweep has
    run before, its record (sweep.yaml) keeps each listed trial's index and name (see cifarlab.experiments.record).
    ``seeds`` replace the file's ``seeds:`` (those a sequential sweep has grown to: cifarlab.experiments.sequential)."""
    source = Path(path)
    spec = _load_file(source)
    if seeds is not None:
        spec["seeds"] = list(seeds)
    where = f"sweep file {path}"
    name = spec.get("name", source.stem)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise UsageError(f"{where}: name: {name!r} must be a plain, non-empty folder name")
    base = _find_base(spec["base"], source) if spec.get("base") is not None else None
    ours = _override_list(spec.get("overrides", []), f"{where}: overrides")
    for item in ours:
        _check_settable(_key(item), f"{where}: overrides")
    for item in overrides:
        _check_settable(_key(item), "the command line")
    settings = _expand(spec, where)
    places = _swept_in(spec)
    for item in ours:
        if _key(item) in places:
            raise UsageError(f"{where}: {_key(item)} is set in both overrides and {places[_key(item)]}; set it in "
                             f"one of them")
    clash = sorted(set(places) & {_key(item) for item in overrides})
    if clash:
        raise UsageError(f"{clash[0]} is swept by {where}; it cannot also be set on the command line")

    common = (*ours, *overrides)
    shared = _load(base, common, f"{where} (base and overrides)")
    launch_options = (*launch_list(spec.get("launch", []), f"{where}: launch"),
                      *check_launch(launch, "launch options on the command line"))
    if "search" in spec:
        search = _read_search(spec, where, base, common, shared)
        return Sweep(name, source, base, common, launch_options, Path(shared.train.output_dir) / name, (),
                     search=search, swept=frozenset(param.key for param in search.space), trainer=trainer)
    drafts = tuple(Trial(i, folder, tuple(row)) for i, (folder, row) in enumerate(zip(_names(settings), settings)))
    sweep = Sweep(name, source, base, common, launch_options, Path(shared.train.output_dir) / name, drafts,
                  swept=frozenset(places), trainer=trainer)
    configs = [_load(base, sweep.overrides(t), f"{where}: trial {t.index} ({t.name})") for t in drafts]
    record = read_record(sweep.record)
    if record is None:
        sweep = dataclasses.replace(sweep, configs=dict(enumerate(configs)))
    else:
        sweep = dataclasses.replace(sweep, swept=sweep.swept | {_key(s) for t in record.trials for s in t.settings})
        check_same_sweep(record, name, shared, swept=sweep.swept)
        sweep = _follow(sweep, record, configs)
    _check_no_twins(sweep, where)
    return sweep


def _follow(sweep: Sweep, record: Record, configs: list[Config]) -> Sweep:
    """``sweep`` (its trials in the file's order) with the recorded index and name of each trial the record
    lists, the indices after the recorded ones for new trials, and the record's trials the file no longer lists."""
    recorded: dict[int, Optional[Config]] = {}

    def same(old: Trial, new: Trial) -> bool:
        """Whether the recorded trial ``old`` is ``new``: its run would continue as ``new`` (the trainer's rule) with
        the same value of every swept key."""
        if old.index not in recorded:
            recorded[old.index] = _recorded_config(sweep, record, old)
        there = recorded[old.index]
        return there is not None and not changes(there, configs[new.index], sweep.swept)

    found = match(record, sweep.trials, same)
    taken = {trial.name for trial in record.trials}
    trials, following = [], record.count
    for draft in sweep.trials:
        if draft.index in found:
            trials.append(Trial(found[draft.index].index, found[draft.index].name, draft.settings))
            continue
        name = draft.name if draft.name not in taken else f"{draft.name[:NAME_LENGTH]}-{_digest(list(draft.settings))}"
        taken.add(name)
        trials.append(Trial(following, name, draft.settings))
        following += 1
    kept = {trial.index for trial in found.values()}
    removed = tuple(trial for trial in record.trials if trial.index not in kept)
    named = {trial.index: with_run_name(config, trial.name) for trial, config in zip(trials, configs)}
    return dataclasses.replace(sweep, trials=tuple(sorted(trials, key=lambda t: t.index)), removed=removed,
                               history=record, configs=dict(sorted(named.items())))


def _read_search(spec: dict[str, Any], where: str, base: Optional[str], common: Sequence[str],
                 shared: Config) -> Search:
    """The ``search:`` section, checked: alone (no trials, grid or seeds), its keys settable per trial and set
    nowhere else, and the config loading at each end of every range (a bad key or value fails before anything
    runs). Its default metric follows ``shared``'s validation split (the base with every override: space.evaluated)."""
    for other in ("trials", "grid", "seeds"):
        if spec.get(other) is not None:
            raise UsageError(f"{where}: search samples the trials; remove {other}: (a search's winners are re-run on "
                             f"seeds by search: confirm:)")
    search = read_search(spec["search"], where, *evaluated(shared))
    for param in search.space:
        _check_key(param.key, f"{where}: search space")
        if param.key == SEED:
            raise UsageError(f"{where}: search space: {SEED} cannot be searched: every trial trains on the base's "
                             f"seed and the confirmation re-runs the best settings on fresh seeds; search other keys")
        _check_settable(param.key, f"{where}: search space", per_trial=True)
        if any(_key(item) == param.key for item in common):
            raise UsageError(f"{where}: {param.key} is searched; it cannot also be set in overrides or on the "
                             f"command line")
    for param in search.space:
        for value in param.values:
            _load(base, [*common, f"{param.key}={_text(value)}"], f"{where}: search space {param.key}={value!r}")
    return search


def _recorded_config(sweep: Sweep, record: Record, trial: Trial) -> Optional[Config]:
    """A recorded trial's config, with the base and overrides of the last version that listed it (now's for a
    record from before versions); None where that no longer loads."""
    then = [version for version in record.versions
            if trial.index in (version.get("trials") or []) and isinstance(version.get("overrides"), list)]
    if then:
        sweep = dataclasses.replace(sweep, base=then[-1].get("base"),
                                    common=tuple(str(item) for item in then[-1]["overrides"]))
    try:
        return load_config(sweep.base, sweep.overrides(trial), overrides_from=str(record.path))
    except UsageError:
        return None


def identity(config: Config) -> str:
    """A trial's resolved config as text, less what the sweep sets for each trial (its run name and tags, where
    and how it starts): two trials with the same identity would train the same run."""
    tree = flatten(to_dict(config))
    tree["data.mean"], tree["data.std"] = (list(values) for values in config.data.normalization())
    return json.dumps({key: value for key, value in tree.items() if key not in PER_TRIAL}, sort_keys=True,
                      default=str)


def _check_no_twins(sweep: Sweep, where: str) -> None:
    seen: dict[str, Trial] = {}
    for trial in sweep.trials:
        twin = seen.setdefault(identity(sweep.configs[trial.index]), trial)
        if twin is not trial:
            shown = [" ".join(t.settings) or "no settings: the base config" for t in (twin, trial)]
            raise UsageError(f"{where}: trials {twin.index} ({shown[0]}) and {trial.index} ({shown[1]}) are the same "
                             f"configuration; remove one")


def _swept_in(spec: dict[str, Any]) -> dict[str, str]:
    """Each key the trials, the grid or the seeds set, and which of them sets it (after :func:`_expand`)."""
    places = {key: "trials" for row in spec.get("trials") or [] for key in row}
    places.update({key: "grid" for key in spec.get("grid") or {} if key not in places})
    if spec.get("seeds"):
        places.setdefault(SEED, "seeds")
    return places


def _load_file(source: Path) -> dict[str, Any]:
    if not source.is_file():
        raise UsageError(f"sweep file {source}: no such file")
    loaded = read_yaml(source)
    if not isinstance(loaded, dict):
        raise UsageError(f"sweep file {source}: not a YAML mapping of {', '.join(FILE_KEYS)}")
    unknown = [str(key) for key in loaded if key not in FILE_KEYS]
    if unknown:
        raise UsageError(f"sweep file {source}: unknown key '{unknown[0]}'; keys: {', '.join(FILE_KEYS)}")
    refuse_resolvers(loaded, f"sweep file {source}")  # its values reach trainers' command lines, which resolve
    return {str(key): value for key, value in loaded.items()}


def _find_base(base: Any, source: Path) -> str:
    """A relative base is looked up in the current directory first (as --config would be), then beside
    the sweep file (so a sweep can name a preset next to it)."""
    if not isinstance(base, str) or not base:
        raise UsageError(f"sweep file {source}: base: {base!r} must be a path to a preset")
    for candidate in (Path(base), source.parent / base):
        if candidate.is_file():
            return str(candidate)
    raise UsageError(f"sweep file {source}: base {base}: no such file in the current directory or in "
                     f"{source.parent}")


def _override_list(value: Any, where: str) -> list[str]:
    """``[key=value, ...]`` or a mapping ``{key: value}``."""
    if isinstance(value, dict):
        return [f"{_check_key(key, where)}={_text(item)}" for key, item in value.items()]
    if not isinstance(value, list) or not all(isinstance(item, str) and "=" in item for item in value):
        raise UsageError(f"{where}: must be a list of key=value (e.g. [train.epochs=2]) or a mapping")
    return list(value)


def _expand(spec: dict[str, Any], where: str) -> list[list[str]]:
    """Each trial's own settings: every explicit trial x every grid point x every seed, in that order."""
    rows = _trial_rows(spec.get("trials"), where)
    grid = _grid(spec.get("grid"), where)
    seeds = _seeds(spec.get("seeds"), where)
    in_rows = {key for row in rows for key in row}
    for key in grid:
        if key in in_rows:
            raise UsageError(f"{where}: {key} is in both trials and grid; set it in one of them")
    if seeds and (SEED in grid or SEED in in_rows):
        raise UsageError(f"{where}: seeds sets {SEED}; remove it from trials and grid")
    expanded: list[list[str]] = []
    for row in rows:
        for point in itertools.product(*grid.values()):  # no grid: one empty point
            for seed in seeds or [None]:
                values = [*row.items(), *zip(grid, point), *([(SEED, seed)] if seed is not None else [])]
                expanded.append([f"{key}={_text(value)}" for key, value in values])
    return expanded  # two trials of one configuration are refused once their configs are loaded


def _trial_rows(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return [{}]
    if not isinstance(value, list) or not value or not all(isinstance(row, dict) for row in value):
        raise UsageError(f"{where}: trials must be a non-empty list of mappings (e.g. [{{model.name: lenet}}])")
    for row in value:
        for key, item in row.items():
            _check_key(key, f"{where}: trials")
            _check_settable(key, f"{where}: trials", per_trial=True)
            _text(item)  # a value an override can hold
    return value


def _grid(value: Any, where: str) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise UsageError(f"{where}: grid must be a non-empty mapping of key: [values] (e.g. {{optim.lr: [0.01, 0.1]}})")
    for key, values in value.items():
        _check_key(key, f"{where}: grid")
        _check_settable(key, f"{where}: grid", per_trial=True)
        if not isinstance(values, list) or not values:
            raise UsageError(f"{where}: grid {key}: {values!r} must be a non-empty list of values, e.g. [1, 2]")
        for item in values:
            _text(item)
    return value


def _seeds(value: Any, where: str) -> list[Optional[int]]:
    if value is None:
        return []
    if (not isinstance(value, list) or not value
            or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in value)):
        raise UsageError(f"{where}: seeds must be a non-empty list of integers (e.g. [0, 1, 2])")
    if len(set(value)) != len(value):
        raise UsageError(f"{where}: seeds {value} repeats a seed")
    for seed in value:
        if not 0 <= seed < SEED_LIMIT:
            raise UsageError(f"{where}: seeds: {seed} is not a seed; train.seed is 0 to 2**32 - 1 ({SEED_LIMIT - 1})")
    return value


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise UsageError(f"{where}: {key!r} is not a dotted config key (e.g. optim.lr)")
    return key


def _check_settable(key: str, where: str, per_trial: bool = False) -> None:
    if key in SET_BY_SWEEP:
        raise UsageError(f"{where}: {key} is set by the sweep (train.run_name: the trial's name; train.resume: auto)")
    if per_trial and key in NOT_SWEPT:
        raise UsageError(f"{where}: {key} cannot differ between trials; set it in overrides or on the command line")


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def _load(base: Optional[str], overrides: Sequence[str], where: str) -> Config:
    try:
        return load_config(base, list(overrides))
    except UsageError as error:
        raise UsageError(f"{where}: {error}") from None


# --- override values and trial names ----------------------------------------------------------------------------


def setting(key: str, value: Any) -> str:
    """``key=value`` as an override that reads back as ``value``."""
    return f"{key}={_text(value)}"


def _text(value: Any, in_list: bool = False) -> str:
    """``value`` as the text of a ``key=value`` override that reads back as ``value`` (OmegaConf parses it as
    YAML): null, true, 0.01, 1e-05, [a,b]; a string only quoted where it would read as something else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_text(item, in_list=True) for item in value) + "]"  # no spaces: no shell quoting
    if isinstance(value, str):
        if _reads_back(value, in_list):
            return value
        return "'" + value.replace("'", "''") + "'"  # YAML's single quotes: nothing inside is special but '
    raise UsageError(f"{value!r} is not a value an override can set (a number, string, true/false, null or a list)")


def _reads_back(text: str, in_list: bool) -> bool:
    written, wanted = (f"[{text}]", [text]) if in_list else (text, text)
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={written}"]), resolve=False) == {"v": wanted}
    except Exception:  # PyYAML's errors (yaml is not imported here) and OmegaConf's: not a value
        return False


def _names(settings: list[list[str]]) -> list[str]:
    """Folder names that read in ``ls``: ``lr=0.01-seed=0``. Keys are shortened to their last component
    unless two swept keys share it; a name that would collide or run long gets a hash of its settings."""
    short = _short_keys(list(dict.fromkeys(_key(s) for row in settings for s in row)))
    names = ["-".join(f"{short[_key(s)]}={_safe(s.split('=', 1)[1])}" for s in row) or "base" for row in settings]
    taken = [name for name in names if names.count(name) > 1]
    return [f"{name[:NAME_LENGTH]}-{_digest(row)}" if len(name) > NAME_LENGTH or name in taken else name
            for name, row in zip(names, settings)]


def _short_keys(keys: list[str]) -> dict[str, str]:
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        short[key] = suffix
    return short


def _safe(text: str) -> str:
    """Filesystem- and shell-friendly: brackets, quotes and spaces go, anything unusual becomes _."""
    return re.sub(r"[^A-Za-z0-9._,+=@-]", "_", re.sub(r"[\[\]' ]", "", text)) or "_"


def _digest(settings: list[str]) -> str:
    return hashlib.sha1("\n".join(sorted(settings)).encode()).hexdigest()[:8]
