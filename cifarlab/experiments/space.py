"""A sweep file's ``search:`` section (docs/sweeps.md, "Searching"): the space of settings to sample, the sampler
(TPE or random), how many trials, the metric to optimize, pruning at the trainer's evaluations, and the
confirmation of the best settings on fresh seeds. Checked here, without Optuna; :func:`sampler` builds Optuna's
sampler and :func:`suggest` samples one trial's settings (cifarlab.run.pruning builds the pruners and the journal,
which the trainer needs too)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from cifarlab.errors import UsageError
from cifarlab.run.pruning import PRUNERS

if TYPE_CHECKING:
    import optuna

    from cifarlab.analysis.metric import Metric
    from cifarlab.config import Config

KEYS = ("space", "method", "trials", "metric", "direction", "seed", "pruning", "confirm")
METHODS = ("tpe", "random")
KINDS = ("log_uniform", "uniform", "int", "choice")
EVALUATED = {"final_acc": "test/acc", "best_acc": "test/acc", "final_top5": "test/acc_top5", "test_loss": "test/loss",
             "val_acc": "val/acc", "best_val_acc": "val/acc", "val_loss": "val/loss"}
"""The metrics a trial can be pruned on, with the evaluation record's figure reported after each epoch."""


@dataclass(frozen=True)
class Param:
    key: str
    kind: str
    values: tuple[Any, ...]
    """(low, high) for log_uniform, uniform and int; the choices for choice."""

    def describe(self) -> dict[str, list[Any]]:
        return {self.kind: list(self.values)}


@dataclass(frozen=True)
class Confirm:
    top: int
    """How many of the best settings to re-run."""
    seeds: int
    """Fresh seeds for each of them, and for the base configuration (the control)."""


@dataclass(frozen=True)
class Search:
    space: tuple[Param, ...]
    method: str = "tpe"
    trials: int = 20
    """Trials to complete (pruned ones count; failed ones do not)."""
    metric: str = "final_acc"
    maximize: bool = True
    seed: int = 0
    pruning: str = "none"
    confirm: Optional[Confirm] = None

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    def identity(self) -> dict[str, Any]:
        """What makes a study this search: its space, metric and direction (the sampler, its seed, the number of
        trials, pruning and confirmation may change between runs)."""
        return {"space": {p.key: p.describe() for p in self.space}, "metric": self.metric,
                "direction": self.direction}


def evaluated(config: Config) -> tuple[bool, bool]:
    """What :func:`read_search` needs of the base configuration (with every override): whether it holds a validation
    split out (``data.val_size`` > 0), and whether it then scores the test set at every evaluation too
    (``train.test_every_epoch``)."""
    held_out = config.data.val_size > 0
    return held_out, held_out and config.train.test_every_epoch


def metric(search: Search) -> Metric:
    from cifarlab.analysis.metric import METRICS

    return METRICS[search.metric]


def read_search(value: Any, where: str, held_out: bool = False, test_every_epoch: bool = False) -> Search:
    """The ``search:`` mapping of a sweep file, checked: every problem is one :class:`UsageError` line. ``held_out``:
    the base configuration holds a validation split out (``data.val_size`` > 0): the metric is ``val_acc`` unless
    the file names one, and the test set is scored only after the last epoch (every epoch with
    ``test_every_epoch``: ``train.test_every_epoch``)."""
    from cifarlab.analysis.metric import DEFAULT, METRICS  # reads run files only; no torch

    where = f"{where}: search"
    if not isinstance(value, dict):
        raise UsageError(f"{where}: must be a mapping with space: (and method, trials, metric, pruning, confirm)")
    unknown = [str(key) for key in value if key not in KEYS]
    if unknown:
        raise UsageError(f"{where}: unknown key '{unknown[0]}'; keys: {', '.join(KEYS)}")
    space = read_space(value.get("space"), where)
    method = _one_of(value.get("method", "tpe"), METHODS, f"{where}: method")
    metric = _one_of(value.get("metric", "val_acc" if held_out else DEFAULT), tuple(METRICS), f"{where}: metric")
    if METRICS[metric].split == "val" and not held_out:
        raise UsageError(f"{where}: metric: {metric} reads the validation split, and the base configuration holds "
                         f"none out; set data.val_size (e.g. data.val_size=5000 in overrides), or choose a test metric")
    direction = value.get("direction", "maximize" if METRICS[metric].higher_is_better else "minimize")
    _one_of(direction, ("maximize", "minimize"), f"{where}: direction")
    pruning = _one_of(str(value.get("pruning", "none")).lower() if value.get("pruning") is not False else "none",
                      PRUNERS, f"{where}: pruning")
    if pruning != "none" and metric not in EVALUATED:
        raise UsageError(f"{where}: pruning: {pruning} decides at each epoch's evaluation, and {metric} has no "
                         f"figure there; use pruning: none or a metric of {', '.join(EVALUATED)}")
    if pruning != "none" and held_out and METRICS[metric].split == "test" and not test_every_epoch:
        raise UsageError(f"{where}: pruning: {pruning} decides at each epoch's evaluation, and with data.val_size the "
                         f"test set is scored only after the last epoch; choose on the validation split (metric: "
                         f"val_acc), or set train.test_every_epoch=true")
    return Search(space, method, _count(value.get("trials", 20), f"{where}: trials"), metric,
                  direction == "maximize", _integer(value.get("seed", 0), f"{where}: seed"), pruning,
                  _confirm(value.get("confirm"), f"{where}: confirm"))


def read_space(value: Any, where: str) -> tuple[Param, ...]:
    """A search's space (``{key: {kind: values}}``: the file's ``space:``, or its folder's search.yaml), checked."""
    example = "e.g. {optim.lr: {log_uniform: [1.0e-3, 1]}}"
    if not isinstance(value, dict) or not value:
        raise UsageError(f"{where}: space must be a non-empty mapping of key: {{kind: values}} ({example})")
    params = []
    for key, spec in value.items():
        at = f"{where}: space {key}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise UsageError(f"{at}: {spec!r} must be one of {', '.join(f'{{{k}: ...}}' for k in KINDS)} ({example})")
        kind, values = next(iter(spec.items()))
        params.append(Param(str(key), kind, _values(kind, values, at)))
    return tuple(params)


def _values(kind: str, values: Any, where: str) -> tuple[Any, ...]:
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise UsageError(f"{where}: choice: {values!r} must be a non-empty list of values")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise UsageError(f"{where}: choice: {values!r} must list plain values (numbers, strings, true/false, null)")
        if len({repr(v) for v in values}) != len(values):
            raise UsageError(f"{where}: choice: {values} repeats a value")
        return tuple(values)
    numbers = isinstance(values, list) and len(values) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and _floats_hold(v) for v in values)
    if not numbers or not values[0] < values[1]:
        raise UsageError(f"{where}: {kind}: {values!r} must be [low, high] with low < high")
    if not math.isfinite(float(values[1]) - float(values[0])):  # Optuna samples in floats
        raise UsageError(f"{where}: {kind}: {values!r} is wider than floats hold (high - low overflows); narrow it")
    if kind == "int" and not all(isinstance(v, int) for v in values):
        raise UsageError(f"{where}: int: {values!r} must be two integers [low, high]")
    if kind == "int" and not all(abs(v) <= 2**53 for v in values):  # beyond, Optuna's TPE fails (NaN, numpy's dtype)
        raise UsageError(f"{where}: int: {values!r} must lie within -2**53 and 2**53 (Optuna samples integers as "
                         f"floats, which hold every integer only that far)")
    if kind == "log_uniform" and not values[0] > 0:
        raise UsageError(f"{where}: log_uniform: {values!r} needs low > 0 (a log scale); use uniform to include 0")
    logs = [math.log(value) for value in values] if kind == "log_uniform" else None
    if logs and logs[1] - logs[0] < 1e6 * math.ulp(max(abs(logs[0]), abs(logs[1]))):  # Optuna's TPE: NaN there
        raise UsageError(f"{where}: log_uniform: {values!r} is too narrow for a log scale (Optuna samples the "
                         f"logarithm, and [log low, log high] holds too few floats); use uniform")
    return (values[0], values[1])


def _floats_hold(number: float) -> bool:
    """Whether a number is a finite float, or an integer that converts to one (not 10**400)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _confirm(value: Any, where: str) -> Optional[Confirm]:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"top", "seeds"}:
        raise UsageError(f"{where}: must be {{top: K, seeds: S}} (re-run the K best settings with S fresh seeds)")
    seeds = _count(value["seeds"], f"{where}: seeds")
    if seeds < 2:
        raise UsageError(f"{where}: seeds: {seeds}; compare needs at least 2 seeds per setting for a spread")
    return Confirm(_count(value["top"], f"{where}: top"), seeds)


def _one_of(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise UsageError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _integer(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{where}: {value!r} must be an integer")
    return value


def _count(value: Any, where: str) -> int:
    if _integer(value, where) < 1:
        raise UsageError(f"{where}: {value} must be at least 1")
    return int(value)


# --- Optuna's objects -----------------------------------------------------------------------------------------


def sampler(search: Search) -> optuna.samplers.BaseSampler:
    """The search's sampler: trial *n*'s settings are drawn by a sampler seeded from the search's seed and *n*, the
    number the study hands out (the journal numbers trials atomically). Workers asking at once (array tasks started
    together) draw their own settings, and a study run again from an empty folder draws the same ones (TPE's, after
    its random start-up, from the same results so far)."""
    import optuna

    class PerTrial(optuna.samplers.BaseSampler):
        """Optuna's sampler for each trial, seeded by its number (every method is given the trial)."""

        def __init__(self) -> None:
            self.made: dict[int, optuna.samplers.BaseSampler] = {}

        def of(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.BaseSampler:
            if trial.number not in self.made:
                while len(self.made) >= 64:  # only the trials still running are asked about: far fewer
                    self.made.pop(next(iter(self.made)))
                self.made[trial.number] = _seeded(search, (search.seed * 1_000_003 + trial.number) % 2**32)
            return self.made[trial.number]

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return self.of(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
            return self.of(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
            return self.of(trial).sample_independent(study, trial, name, distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            self.of(trial).before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self.of(trial).after_trial(study, trial, state, values)

    return PerTrial()


def _seeded(search: Search, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if search.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, search.trials // 4)))


def settings(search: Search, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's settings from the study's sampled values: floats to 4 significant digits (0.001738, not
    0.0017376198756776707), so that names, tables and pasted options read; the run trains with these values."""
    return {p.key: rounded(params[p.key], p) for p in search.space}


def rounded(value: Any, param: Param) -> Any:
    """A sampled float to 4 significant digits, or to as many more as it takes to stay inside the range (0.99998713
    in [0.99995, 0.99999] is 0.99999, not 1.0, which the range excludes); other values as they are."""
    if not isinstance(value, float) or param.kind == "choice":
        return value
    low, high = param.values
    value = min(max(value, low), high)  # Optuna's exp(log(x)) of a log_uniform range can miss it by a few ulps
    for digits in range(4, 18):  # 17 significant digits give back every float exactly
        shortened = float(f"{value:.{digits}g}")
        if low <= shortened <= high:
            return shortened
    return value


def suggest(search: Search, trial: optuna.Trial) -> dict[str, Any]:
    """Sample one trial's settings ({key: value}, as sampled: :func:`settings` rounds them)."""
    chosen: dict[str, Any] = {}
    for param in search.space:
        low, *rest = param.values
        if param.kind == "log_uniform":
            chosen[param.key] = trial.suggest_float(param.key, low, rest[0], log=True)
        elif param.kind == "uniform":
            chosen[param.key] = trial.suggest_float(param.key, low, rest[0])
        elif param.kind == "int":
            chosen[param.key] = trial.suggest_int(param.key, low, rest[0])
        else:
            chosen[param.key] = trial.suggest_categorical(param.key, list(param.values))
    return chosen


def distributions(params: tuple[Param, ...]) -> dict[str, optuna.distributions.BaseDistribution]:
    """The space as Optuna's distributions, as :func:`suggest` samples it (for a study built from finished trials)."""
    import optuna

    made: dict[str, optuna.distributions.BaseDistribution] = {}
    for param in params:
        if param.kind == "choice":
            made[param.key] = optuna.distributions.CategoricalDistribution(list(param.values))
            continue
        low, high = param.values
        if param.kind == "int":
            made[param.key] = optuna.distributions.IntDistribution(low, high)
        else:
            made[param.key] = optuna.distributions.FloatDistribution(low, high, log=param.kind == "log_uniform")
    return made
