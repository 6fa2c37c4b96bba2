"""What a search teaches (cifarlab.experiments.insight): each searched key's importance, the evaluator named, the
same figures from --list (the study) and compare (the run directories), call after call; one line where there is
nothing to weigh; a note where Optuna is missing; the search's W&B summary run. And --list and --best read the
search from its folder (search.yaml), refusing a folder that disagrees with the file. Search folders are made here,
their trials' run directories written without training (tests/test_search.py's helpers)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_search import finished_run, searched, snapshot, write

from cifarlab import compare
from cifarlab import sweep as sweeps
from cifarlab.analysis.metric import METRICS
from cifarlab.analysis.searchview import Objective
from cifarlab.analysis.sweepdir import trial_name
from cifarlab.experiments import insight, searching, space
from cifarlab.experiments.spec import read_sweep
from cifarlab.experiments.study import open_study, sampled_trial

from conftest import REPO

optuna = pytest.importorskip("optuna")  # the [search] extra

SPACE = {"optim.lr": {"log_uniform": [1.0e-3, 1.0]}, "optim.weight_decay": {"log_uniform": [1.0e-5, 1.0e-2]},
         "optim.schedule": {"choice": ["cosine", "none"]}}


def taught(tmp_path: Path, trials: int = 12, *overrides: str) -> tuple[Path, Any, Any]:
    """A random search of three keys whose ``trials`` trials have completed, each with its finished run directory
    (as the trainer leaves it) and an accuracy that optim.lr alone sets: its file, sweep and study."""
    file = write(tmp_path, {"space": SPACE, "trials": trials, "method": "random"})
    sweep = read_sweep(str(file), [f"train.output_dir={tmp_path / 'runs'}", *overrides])
    study = open_study(sweep)
    study.sampler = space.sampler(sweep.search)
    for _ in range(trials):
        asked = study.ask()
        trial = sampled_trial(sweep, asked.number, space.suggest(sweep.search, asked))
        config = sweep.configs[trial.index]
        accuracy = 0.6 - 0.08 * abs(math.log10(config.optim.lr) + 1.3)
        finished_run(sweep.run_dir(trial), config, accuracy)
        study.tell(asked.number, accuracy)
    return file, sweep, study


@pytest.mark.unit
def test_list_and_compare_print_the_same_importances_most_important_first_and_they_repeat(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file, sweep, study = taught(tmp_path)
    listing = [str(file), "--list", f"train.output_dir={tmp_path / 'runs'}"]
    assert sweeps.main(listing) == 0
    first = capsys.readouterr()
    assert sweeps.main(listing) == 0
    assert capsys.readouterr() == first  # the figures repeat exactly
    assert len(first.out.splitlines()) == 13  # stdout: the header and one row a trial, as before
    lines = first.err.splitlines()
    assert lines[0] == (f"importance of each searched key for final_acc (shares of 1) over 12 completed trials, by "
                        f"{insight.EVALUATOR}:")
    assert "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator()" in lines[0]
    shares = {key: float(share) for key, share in (line.split() for line in lines[1:4])}
    assert set(shares) == set(SPACE) and next(iter(shares)) == "optim.lr"  # the key that sets the accuracy
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    assert sum(shares.values()) == pytest.approx(1.0, abs=2e-3)
    assert lines[4:] == ["  only 12 completed trials (its top 10 % holds under 5 of them): a hint, firmer from 50"]
    # compare reads the run directories, not the study: the same lines, and in JSON the same figures, unrounded.
    assert compare.main([str(sweep.folder)]) == 0
    assert "\n".join(lines) + "\n" in capsys.readouterr().out
    assert compare.main([str(sweep.folder), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["importance"]
    from_study = insight.of_study(study, searching.objective(sweep), sweep.search)
    assert (listed["evaluator"], listed["trials"], listed["none"]) == (insight.EVALUATOR, 12, None)
    assert listed["shares"] == from_study.shares and list(listed["shares"]) == list(shares)
    assert not sweep.dir.wandb.exists()  # W&B is off in these trials: no summary run


@pytest.mark.unit
def test_fewer_than_2_completed_trials_or_one_searched_key_is_one_line(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    goal = Objective(METRICS["final_acc"], True, list(SPACE), SPACE)
    one = insight.importances(goal, [({"optim.lr": 0.1, "optim.weight_decay": 1e-4, "optim.schedule": "none"}, 0.5)])
    assert insight.lines(one, goal) == ["importance of the searched keys: none: 1 completed trial(s); importances "
                                        "need 2 or more"]
    file = write(tmp_path / "new", {"space": SPACE})  # not started: no study yet
    assert sweeps.main([str(file), "--list", f"train.output_dir={tmp_path / 'new' / 'runs'}"]) == 0
    assert capsys.readouterr().err == ("importance of the searched keys: none: 0 completed trial(s); importances "
                                       "need 2 or more\n")
    file, sweep, _ = searched(tmp_path, 1, [(0.05, 0.30), (0.1, 0.20), (0.02, 0.25)])  # optim.lr alone
    one_key = "importance of the searched keys: none: one searched key (optim.lr): nothing to weigh it against\n"
    assert sweeps.main([str(file), "--list", f"train.output_dir={tmp_path / 'runs'}"]) == 0
    assert capsys.readouterr().err == one_key
    assert compare.main([str(sweep.folder)]) == 0
    assert capsys.readouterr().out.endswith(one_key)


@pytest.mark.unit
def test_compare_on_a_search_folder_without_optuna_notes_how_to_install_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, sweep, _ = taught(tmp_path, 4)
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    assert compare.main([str(sweep.folder)]) == 0
    captured = capsys.readouterr()
    chose, *rest = captured.err.splitlines()  # first, that the search chose on the test set it is ranked by
    assert chose.startswith(f"cifarlab: note: these runs were chosen by the search {sweep.folder} on the test set")
    assert rest == ['cifarlab: note: the searched keys\' importances need Optuna, an optional extra: '
                    'pip install -e ".[search]"']
    assert "trial-0003" in captured.out and "importance" not in captured.out
    assert compare.main([str(sweep.folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["importance"] is None


@pytest.mark.unit
def test_compare_on_a_search_folder_imports_optuna_for_the_importances_alone(tmp_path: Path) -> None:
    """Not the runner, the study, the sweep file's reader: compare judges the folder's files."""
    _, sweep, _ = taught(tmp_path, 3)
    probe = ("import sys; from cifarlab.compare import main; code = main(sys.argv[1:]); "
             "print(sorted(m for m in sys.modules if m == 'optuna' or m.startswith('cifarlab.experiments'))); "
             "sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, str(sweep.folder)], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, str(sorted(
        ["optuna", "cifarlab.experiments", "cifarlab.experiments.insight", "cifarlab.experiments.record",
         "cifarlab.experiments.space"]))), result.stderr


@pytest.mark.unit
def test_list_and_best_read_the_search_from_its_folder_and_refuse_one_that_disagrees_with_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The folder's search.yaml is what --list, --best and compare read; an edited one (the study itself is checked
    against the file before) is refused in one line, nothing written; without it (a folder from before it was
    written), the file's search, as before."""
    file, sweep, study = searched(tmp_path, 1, [(0.05, 0.30), (0.1, 0.20)])
    searching.confirm_file(sweep, study)
    runs = [f"train.output_dir={tmp_path / 'runs'}"]
    described = yaml.safe_load(sweep.dir.description.read_text())
    assert searching.objective(sweep) == Objective(METRICS["final_acc"], True, ["optim.lr"],
                                                   described["space"])
    sweep.dir.description.write_text(yaml.safe_dump({**described, "metric": "test_loss", "direction": "minimize"}))
    before = snapshot(tmp_path / "runs")
    for option in ("--list", "--best"):
        assert sweeps.main([str(file), option, *runs]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == (
            f"cifarlab: error: {sweep.dir.description} gives the search another metric than {file} (edited, or "
            f"another search's); move it away: the search writes it again when it next runs\n")
    sweep.dir.description.write_text("metric: accuracy\n")
    assert sweeps.main([str(file), "--list", *runs]) == 2
    assert capsys.readouterr().err.startswith(f"cifarlab: error: {sweep.dir.description}: not what a search writes")
    edited = str(sweep.dir.description)  # all that changed: this test's own edits
    assert {k: v for k, v in snapshot(tmp_path / "runs").items() if k != edited} == \
        {k: v for k, v in before.items() if k != edited}
    sweep.dir.description.unlink()
    assert sweeps.main([str(file), "--list", *runs]) == 0
    assert [line.split("\t")[3] for line in capsys.readouterr().out.splitlines()] == ["value", "30.00 %", "20.00 %"]


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    service = os.environ.get("WANDB_SERVICE")
    yield
    if service is None:  # wandb.init leaves its service's address here, for processes this one starts later
        os.environ.pop("WANDB_SERVICE", None)


@pytest.mark.integration
@pytest.mark.usefixtures("wandb_offline")
def test_a_finished_search_logs_its_importances_and_best_trial_to_a_w_and_b_summary_run_in_its_group(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wandb_offline import find_run_files, read_records, read_summary, wait_for_exit

    file, sweep, study = taught(tmp_path, 12, "logging.wandb.mode=offline")
    # Every trial has completed: the search has nothing to run, says it is done and logs its summary.
    assert sweeps.main([str(file), f"train.output_dir={tmp_path / 'runs'}", "logging.wandb.mode=offline"]) == 0
    assert "sweep search: the importances and the best trial logged to W&B: W&B run files in " in \
        capsys.readouterr().out
    [path] = find_run_files(sweep.dir.wandb)
    wait_for_exit(path)
    run = next(record["run"] for record in read_records(path) if record["type"] == "run")
    assert (run["run_group"], run["job_type"], run["display_name"]) == ("search", "search-summary", "search-summary")
    goal = searching.objective(sweep)
    best = searching.ranked(study, goal)[0]
    summary = read_summary(path)
    assert (summary["search/best_trial"], summary["search/best_value"]) == (trial_name(best.number), best.value)
    assert {key: summary[f"search/best/{key}"] for key in SPACE} == space.settings(sweep.search, best.params)
    table = json.loads((path.parent / "files" / str(summary["search/importance"]["path"])).read_text())
    shares = insight.of_study(study, goal, sweep.search).shares
    assert table == {"columns": ["key", "importance", "evaluator"],
                     "data": [[key, share, insight.EVALUATOR] for key, share in shares.items()]}
