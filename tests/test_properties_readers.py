"""Properties of the run-folder readers (Hypothesis; profiles in conftest.py): a file of a run, sweep or search cut
short or grown by any bytes (a kill mid-write, a full disk, a stray write) is read as what was whole, or refused in
one UsageError line; never a traceback, never a record that was not written whole."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import optuna
import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from cifarlab.analysis import results, searchview
from cifarlab.analysis.sweepdir import SweepDir
from cifarlab.config import load_config, to_yaml
from cifarlab.errors import UsageError
from cifarlab.experiments import searching, study
from cifarlab.experiments.record import read_record
from cifarlab.experiments.runner import write_record
from cifarlab.experiments.spec import read_sweep
from cifarlab.run import pruning
from cifarlab.run.rundir import RunDir, read_records

from conftest import CONFIGS

pytestmark = pytest.mark.unit

numbers = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=False), st.sampled_from([0.0, 1.0, 0.5]))
records = st.lists(st.fixed_dictionaries({"step": st.integers(0, 10**6)},
                                         optional={"test/acc": st.floats(0, 1), "test/images": st.integers(1, 10**4),
                                                   "train/loss": numbers, "note": st.text(max_size=8)}),
                   max_size=6)
# What a kill mid-write, a full disk or a stray write leaves: any bytes, and bytes that look like a record's.
junk = st.one_of(st.binary(max_size=24), st.sampled_from([b"", b"\n", b'{"step": 1', b'{"step": 1}', b"{}\n", b"\xff\n",
                                                         b'{"step": true}\n', b"[1]\n", b"\r\n", b" \n", b"\x00"]))


@contextlib.contextmanager
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as scratch:
        yield Path(scratch)


def damaged(original: bytes, cut: int, tail: bytes) -> bytes:
    """``original`` cut after ``cut`` bytes (at most all of them) with ``tail`` appended."""
    return original[:min(cut, len(original))] + tail


def intact(written: list[dict[str, Any]], original: bytes, cut: int) -> list[dict[str, Any]]:
    """The records whose whole line, its newline included, survives the cut."""
    kept, end = [], 0
    for record in written:
        end += len(json.dumps(record)) + 1
        if end > cut:
            break
        kept.append(record)
    return kept


def same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def reads_what_was_whole(found: list[dict[str, Any]], written: list[dict[str, Any]], original: bytes, cut: int,
                         tail: bytes) -> None:
    """Every record that survived whole, in order, and past them only what the last line or the tail holds."""
    whole = intact(written, original, cut)
    assert same(found[:len(whole)], whole), (found, whole)
    assert len(found) <= len(whole) + 1 + tail.count(b"\n") + tail.count(b"\r")


@given(records, st.integers(0, 2000), junk, st.booleans())
@example([{"step": 1, "test/acc": 0.5}], 10**6, b"\xff\n", True)
@example([{"step": 1, "test/acc": 0.5}, {"step": 2, "test/acc": 0.6}], 20, b"", True)
def test_a_jsonl_file_cut_or_grown_reads_what_was_whole_or_is_refused(written: list[dict[str, Any]], cut: int,
                                                                      tail: bytes, unfinished: bool) -> None:
    """metrics.jsonl and history.jsonl: append-only records, each a JSON object with an integer step."""
    original = "".join(json.dumps(record) + "\n" for record in written).encode()
    with folder() as where:
        path = where / "metrics.jsonl"
        path.write_bytes(damaged(original, cut, tail))
        try:
            read = read_records(path, tail_may_be_torn=unfinished)
        except UsageError as error:
            assert str(error).strip()
            return
    assert len(read.lines) == len(read.records)
    assert all(same(json.loads(line), record) for line, record in zip(read.lines, read.records))
    reads_what_was_whole(read.records, written, original, cut, tail)


# --- a run directory ------------------------------------------------------------------------------------------


def evaluations(accuracies: list[float]) -> list[dict[str, Any]]:
    return [{"step": 8 * (i + 1), "epoch": i + 1, "test/acc": acc, "test/loss": 1.0 - acc, "test/images": 100}
            for i, acc in enumerate(accuracies)]


def run_folder(where: Path, written: list[dict[str, Any]], finished: bool) -> RunDir:
    """What a trainer leaves: config.yaml, metrics.jsonl, environment.json and, when finished, its weights."""
    run = RunDir(where / "run")
    run.root.mkdir()
    run.config.write_text(to_yaml(load_config(str(CONFIGS / "smoke.yaml"))))
    run.metrics.write_text("".join(json.dumps(record) + "\n" for record in written))
    run.environment.write_text(json.dumps({"starts": [{"processes": 1, "torch": "2.x"}, {"processes": 2}]},
                                          indent=2) + "\n")
    if finished:
        run.weights.write_bytes(b"weights")
    return run


FILES = ("metrics", "config", "environment")


@given(st.lists(st.floats(0, 1), min_size=1, max_size=4), st.booleans(), st.sampled_from(FILES),
       st.integers(0, 4000), junk)
@example([0.5], True, "environment", 10**6, b"\xff")  # found: invalid UTF-8 was a UnicodeDecodeError
@example([0.5], True, "config", 10**6, b"\x00")  # found: yaml's ReaderError, a traceback
@example([0.5], False, "config", 10**6, b"a: 'b\n")  # found: yaml's ScannerError
def test_a_run_with_a_damaged_file_is_read_as_it_was_or_refused(accuracies: list[float], finished: bool, which: str,
                                                                cut: int, tail: bytes) -> None:
    written = evaluations(accuracies)
    with folder() as where:
        run = run_folder(where, written, finished)
        path = getattr(run, which)
        original = path.read_bytes()
        path.write_bytes(damaged(original, cut, tail))
        try:
            read = results.read_run(run.root)
        except UsageError as error:
            assert str(error).strip()
            return
    if which == "metrics":
        reads_what_was_whole(read.evaluations, written, original, cut, tail)
    else:
        assert same(read.evaluations, written)
    if which == "environment":
        assert read.environment in ({}, {"processes": 1, "torch": "2.x"}), read.environment
        assert read.environment or cut < len(original) or tail.strip()
    else:
        assert read.environment == {"processes": 1, "torch": "2.x"}
    if which != "config":
        assert read.config["optim.lr"] == load_config(str(CONFIGS / "smoke.yaml")).optim.lr


# --- a sweep's record -----------------------------------------------------------------------------------------


def recorded_sweep(where: Path) -> Path:
    file = where / "sweep.yaml"
    file.write_text(yaml.safe_dump({"name": "s", "base": str(CONFIGS / "smoke.yaml"),
                                    "overrides": ["train.epochs=1", "data.train_size=64", "train.batch_size=32"],
                                    "grid": {"optim.lr": [0.01, 0.1]}, "seeds": [0, 1]}))
    write_record(read_sweep(str(file), [f"train.output_dir={where / 'runs'}"]))
    return file


@given(st.integers(0, 5000), junk | st.sampled_from([b"- 3\n", b"  - 7\n", b"versions: 3\n", b"trials: {}\n"]))
@example(66, b"")  # found: cut inside a trial's name, the record still read, as another (now: its digest differs)
@example(10**6, b"- 3\n")  # found: a version that is no mapping was an AttributeError once read_sweep used it
def test_a_damaged_sweep_record_is_read_as_it_was_or_refused(cut: int, tail: bytes) -> None:
    with folder() as where:
        file = recorded_sweep(where)
        record = where / "runs" / "s" / "sweep.yaml"
        before = read_record(record)
        assert before is not None
        record.write_bytes(damaged(record.read_bytes(), cut, tail))
        try:
            after = read_record(record)
            sweep = read_sweep(str(file), [f"train.output_dir={where / 'runs'}"])
        except UsageError as error:
            assert str(error).strip()
            return
    if after is not None:
        kept = {trial.index: trial for trial in after.trials}
        assert all(kept[index] == trial for index, trial in enumerate(before.trials) if index in kept)
    assert sorted(trial.index for trial in sweep.trials) == [0, 1, 2, 3]


# --- a search folder: its journal (Optuna's) and search.yaml ------------------------------------------------------


@contextlib.contextmanager
def search_folder() -> Iterator[tuple[Path, Any, dict[int, Any]]]:
    """A search with three trials told to its study (no trainer ran): its sweep file, the sweep, and each trial's
    value by number."""
    with folder() as where:
        file = where / "search.yaml"
        file.write_text(yaml.safe_dump({"name": "s", "base": str(CONFIGS / "smoke.yaml"),
                                        "overrides": ["train.epochs=1"],
                                        "search": {"space": {"optim.lr": {"log_uniform": [0.001, 0.1]}}, "trials": 3}}))
        sweep = read_sweep(str(file), [f"train.output_dir={where / 'runs'}"])
        opened = study.open_study(sweep)
        values = {}
        for number in range(3):
            trial = opened.ask()
            trial.suggest_float("optim.lr", 0.001, 0.1, log=True)
            opened.tell(trial, 0.1 * number)
            values[number] = 0.1 * number
        yield where, sweep, values


@given(st.integers(0, 4000), junk | st.sampled_from([b'{"op_code": 99}\n', b'{"a": 1}\n', b"[1]\n", b"\xff\xfe\n"]))
@example(10**6, b"\xff\xfe\n")  # found: Optuna's UnicodeDecodeError
@example(10**6, b"[1]\n")  # found: Optuna's TypeError
@example(10**6, b'{"op_code": 99}\n')  # found: Optuna's AssertionError ("Should not reach.")
@example(10**6, b'{"a": 1}\n')  # found: Optuna's KeyError, read as "holds no study named s"
@example(100, b"\n")  # found: Optuna's JSONDecodeError (a line cut short before others)
def test_a_damaged_search_journal_is_read_as_it_was_or_refused(cut: int, tail: bytes) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with search_folder() as (_, sweep, values):
        journal = SweepDir(sweep.folder).journal
        journal.write_bytes(damaged(journal.read_bytes(), cut, tail))
        try:
            with study.reading(sweep) as read:
                trials = read.trials if read is not None else []
        except UsageError as error:
            assert str(error).strip()
            return
    for trial in trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == values[trial.number]


@given(st.integers(0, 4000), junk | st.sampled_from([b'{"op_code": 99}\n', b'{"a": 1}\n', b"[1]\n", b"\xff\xfe\n"]))
@example(10**6, b'{"a": 1}\n')
@example(10**6, b"\xff\xfe\n")
@example(100, b"\n")
def test_a_trainer_that_prunes_reads_a_damaged_journal_as_it_was_or_refuses_it_in_one_line(cut: int,
                                                                                          tail: bytes) -> None:
    """The trainer's side of the journal (a search's pruning): its trial as the sweep told it, or one line."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with search_folder() as (_, sweep, _values):
        journal = SweepDir(sweep.folder).journal
        journal.write_bytes(damaged(journal.read_bytes(), cut, tail))
        try:
            trial = pruning._attach({"journal": str(journal), "study": sweep.name, "trial": 2, "pruning": "median"})
        except UsageError as error:
            assert len(str(error).strip().splitlines()) == 1
            return
        assert trial.number == 2


def test_a_trainer_whose_journal_was_replaced_by_another_search_refuses_in_one_line() -> None:
    with search_folder() as (_, sweep, _values):
        journal = SweepDir(sweep.folder).journal
        order = {"journal": str(journal), "study": sweep.name, "trial": 7, "pruning": "median"}
        with pytest.raises(UsageError, match=r"search\.journal holds no trial 7 of a study named s \(replaced or cut"):
            pruning._attach(order)
        with pytest.raises(UsageError, match=r"holds no trial 0 of a study named other"):
            pruning._attach({**order, "study": "other", "trial": 0})


@given(st.integers(0, 400), junk | st.sampled_from([b"metric: 3\n", b"space: []\n", b"direction: up\n"]),
       st.sampled_from([None, "final_acc", "test_loss"]))
@example(10**6, b"\x00", None)
def test_a_damaged_search_description_is_read_as_it_was_or_refused(cut: int, tail: bytes,
                                                                   metric: Optional[str]) -> None:
    with search_folder() as (_, sweep, _values):
        description = SweepDir(sweep.folder).description
        description.write_bytes(damaged(description.read_bytes(), cut, tail))
        try:
            goal = searchview.objective(sweep.folder, metric)  # compare's reader
            searchview.read_trials(sweep.folder, goal)
            searching.objective(sweep)  # sweep --list's and --best's
        except UsageError as error:
            assert str(error).strip()
            return
    assert goal.metric.name == (metric or "final_acc")


def test_a_search_description_whose_metric_is_a_mapping_is_refused_in_one_line() -> None:
    with search_folder() as (_, sweep, _values):  # the shrunk example: search.yaml cut after 150 bytes, then {}
        description = SweepDir(sweep.folder).description
        description.write_bytes(damaged(description.read_bytes(), 150, b"{}"))
        assert description.read_text().endswith("\nmetric: {}")
        with pytest.raises(UsageError):
            searchview.objective(sweep.folder, None)
