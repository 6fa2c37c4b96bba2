"""Properties of sweep files (Hypothesis; profiles in conftest.py): any mapping over the documented keys (and junk)
is one ``cifarlab: error:`` line with exit 2, or trials whose names are unique and filesystem-safe and do not depend
on the order of the file's keys; growing a recorded sweep renames none of its trials."""

from __future__ import annotations

import contextlib
import io
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from hypothesis import assume, example, given
from hypothesis import strategies as st

from cifarlab import sweep as sweeps
from cifarlab.errors import UsageError
from cifarlab.experiments.runner import write_record
from cifarlab.experiments.spec import FILE_KEYS, NAME_LENGTH, Sweep, read_sweep

from conftest import CONFIGS

pytestmark = pytest.mark.unit

SAFE = re.compile(r"[A-Za-z0-9._,+=@-]+")
"""What a trial's folder name is made of (docs/sweeps.md: brackets, quotes and spaces dropped, the rest _)."""
SMALL = ["train.epochs=1", "data.train_size=64", "data.test_size=32", "train.batch_size=32"]

odd = st.text(alphabet="ab/ .'\"[]{}:,=$#é\\\n-_", max_size=6)
GOOD: dict[str, Any] = {
    "optim.lr": st.one_of(st.sampled_from([0.01, 0.1, 0.05]), st.floats(1e-4, 1.0)),
    "optim.weight_decay": st.sampled_from([0, 0.001, 5e-4]),
    "train.ema": st.sampled_from([None, 0.9, 0.99]),
    "model.name": st.sampled_from(["lenet", "convnet_bn"]),
    "logging.wandb.notes": st.one_of(odd, st.none()),
    "data.mean": st.sampled_from([[0.5, 0.5, 0.5], [0.4, 0.4, 0.4]]),
    "optim.nesterov": st.booleans(),
}
BAD: dict[str, Any] = {"optim.weight_decay": st.just(-1), "train.ema": st.just(2), "model.name": st.just("nope"),
                       "data.mean": st.just([1]), "train.run_name": st.just("x"), "nope.key": st.just(1)}


def grid_and_trials(values: dict[str, Any], smallest: int) -> tuple[Any, Any]:
    """A grid and a trials: list over ``values``' keys, each with its own values; ``smallest`` 1: nothing empty, no
    value or row twice (which a sweep refuses)."""
    unique = repr if smallest else None
    keys = st.lists(st.sampled_from(sorted(values)), min_size=smallest, max_size=2, unique=True)
    grid = keys.flatmap(lambda chosen: st.fixed_dictionaries(
        {key: st.lists(values[key], min_size=smallest, max_size=3, unique_by=unique) for key in chosen}))
    row = keys.flatmap(lambda chosen: st.fixed_dictionaries({key: values[key] for key in chosen}))
    return grid, st.lists(row, min_size=smallest, max_size=2, unique_by=unique)


grids, rows = grid_and_trials({**GOOD, **{key: st.one_of(GOOD.get(key, bad), bad) for key, bad in BAD.items()}}, 0)
good_grids, good_rows = grid_and_trials(GOOD, 1)
junk = st.one_of(st.none(), st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2))
FIELDS = {
    "name": st.one_of(st.just("s"), st.text(max_size=6), junk),
    "base": st.one_of(st.just(str(CONFIGS / "smoke.yaml")), junk),
    "overrides": st.one_of(st.just(SMALL), st.just([*SMALL, "optim.momentum=0.8"]), junk),
    "grid": st.one_of(grids, junk),
    "trials": st.one_of(rows, junk),
    "seeds": st.one_of(st.lists(st.one_of(st.integers(0, 3), st.integers(-1, 2**33), st.booleans()), max_size=3),
                       junk),
    "launch": st.one_of(st.just(["--num_processes", "1"]), junk),
    "search": junk,
    "surprise": junk,
}
assert set(FIELDS) - {"surprise"} == set(FILE_KEYS), "every documented key of a sweep file, and one that is not"
specs = st.fixed_dictionaries({}, optional=FIELDS)
good_specs = st.fixed_dictionaries({"name": st.just("s"), "base": st.just(str(CONFIGS / "smoke.yaml")),
                                    "overrides": st.just(SMALL)},
                                   optional={"grid": good_grids, "trials": good_rows,
                                             "seeds": st.lists(st.integers(0, 3), min_size=1, max_size=3,
                                                               unique=True)})


@contextlib.contextmanager
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as scratch:
        yield Path(scratch)


def write(where: Path, spec: dict[str, Any]) -> Path:
    file = where / "sweep.yaml"
    file.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return file


def read(file: Path) -> Optional[Sweep]:
    """The sweep, or None where it is refused in one line."""
    try:
        return read_sweep(str(file), [f"train.output_dir={file.parent / 'runs'}"])
    except UsageError as error:  # printed as one line: test_a_refused_sweep_file_is_one_line_and_exit_2
        assert str(error).strip()
        return None


def named(sweep: Sweep) -> list[tuple[int, str, tuple[str, ...]]]:
    return [(trial.index, trial.name, trial.settings) for trial in sweep.trials]


def check_names(sweep: Sweep) -> None:
    names = [trial.name for trial in (*sweep.trials, *sweep.removed)]
    assert len(set(names)) == len(names), names
    for name in names:
        assert SAFE.fullmatch(name) and name not in (".", "..") and len(name) <= NAME_LENGTH + 9, name


@given(specs, st.randoms(use_true_random=False))
@example({"name": "s", "base": str(CONFIGS / "smoke.yaml"), "overrides": SMALL,
          "grid": {"logging.wandb.notes": ["a/b", "a_b", "a b"]}}, random.Random(0))
def test_a_sweep_file_is_trials_with_safe_unique_names_whatever_the_order_of_its_keys(spec: dict[str, Any],
                                                                                     shuffler: random.Random) -> None:
    with folder() as where:
        sweep = read(write(where, spec))
        keys = list(spec)
        shuffler.shuffle(keys)
        again = read(write(where, {key: spec[key] for key in keys}))
    assert (sweep is None) == (again is None)
    if sweep is not None and again is not None:
        check_names(sweep)
        assert named(again) == named(sweep)


@given(specs)
@example({"base": "\r"})  # found: the line break of a base that is no file printed as two lines
def test_a_refused_sweep_file_is_one_line_and_exit_2(spec: dict[str, Any]) -> None:
    with folder() as where:
        file = write(where, spec)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = sweeps.main(["--count", str(file), f"train.output_dir={where / 'runs'}"])
    if code == 0:
        assert int(out.getvalue()) >= 1 and not err.getvalue()
    else:
        assert code == 2 and not out.getvalue(), (code, out.getvalue())
        assert err.getvalue().startswith("cifarlab: error: ") and len(err.getvalue().splitlines()) == 1, err.getvalue()


def shuffled(spec: dict[str, Any], shuffler: random.Random) -> dict[str, Any]:
    """``spec`` with the keys of its grid and of each of its trials in another order."""
    def mixed(mapping: dict[str, Any]) -> dict[str, Any]:
        keys = list(mapping)
        shuffler.shuffle(keys)
        return {key: mapping[key] for key in keys}
    return {**spec, **({"grid": mixed(spec["grid"])} if isinstance(spec.get("grid"), dict) else {}),
            **({"trials": [mixed(row) for row in spec["trials"]]} if isinstance(spec.get("trials"), list) else {})}


grown_by = st.fixed_dictionaries({"seeds": st.lists(st.integers(4, 9), max_size=2),
                                  "values": st.lists(st.sampled_from([0.2, 0.3]), max_size=1),
                                  "rows": st.lists(st.sampled_from([{"optim.lr": 0.07}, {"model.name": "convnet_bn"}]),
                                                   max_size=1)})


@given(good_specs, grown_by, st.randoms(use_true_random=False))
@example({"name": "s", "base": str(CONFIGS / "smoke.yaml"), "overrides": SMALL, "grid": {"optim.lr": [0.01, 0.1]},
          "seeds": [0, 1]}, {"seeds": [4], "values": [0.2], "rows": [{"model.name": "convnet_bn"}]},
         random.Random(0))
def test_growing_or_reordering_a_recorded_sweep_renames_none_of_its_trials(spec: dict[str, Any], more: dict[str, Any],
                                                                           shuffler: random.Random) -> None:
    with folder() as where:
        first = read(write(where, spec))
        assume(first is not None)
        assert first is not None
        write_record(first)
        grown = shuffled(spec, shuffler)
        if more["seeds"] and isinstance(spec.get("seeds"), list):
            grown["seeds"] = [*spec["seeds"], *(seed for seed in more["seeds"] if seed not in spec["seeds"])]
        if more["values"] and isinstance(spec.get("grid"), dict) and "optim.lr" in spec["grid"]:
            grown["grid"] = {**grown["grid"], "optim.lr": [*spec["grid"]["optim.lr"], *more["values"]]}
        if more["rows"] and isinstance(spec.get("trials"), list):
            grown["trials"] = [*grown["trials"], *more["rows"]]
        second = read(write(where, grown))
        assume(second is not None)  # a grown value may make twins of trials, which is refused
        assert second is not None
    check_names(second)
    now = {trial.index: (trial.name, set(trial.settings)) for trial in second.trials}
    for trial in first.trials:
        assert now.get(trial.index) == (trial.name, set(trial.settings)), (trial, now.get(trial.index))
    assert {name for name, _ in now.values()} >= {trial.name for trial in first.trials}
