"""Sequential sweeps (cifarlab.experiments.sequential, ``cifarlab.sweep --until-decided``): Pocock's boundary against
its published constants; the rule simulated under the null (its false-positive rate, looking after every round up to
the cap), under a real difference (its power and how early it stops) and with an equivalence margin; and the CLI's
rounds end to end with a fake trainer (no training)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import yaml
from scipy.stats import norm
from test_sweep import SMALL, lines, spec, write

from cifarlab import sweep as sweeps
from cifarlab.analysis import stats
from cifarlab.analysis.results import read_run
from cifarlab.config import to_yaml
from cifarlab.experiments import sequential
from cifarlab.experiments.record import Trial
from cifarlab.experiments.sequential import decide, pocock_level, welch_intervals
from cifarlab.experiments.spec import Sweep
from cifarlab.run.rundir import RunDir

from conftest import FAKE_TRAINER, cli_env

pytestmark = pytest.mark.unit


# --- the rule ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("looks, constant", [([1], 1.960), ([1, 2], 2.178), ([1, 2, 3, 4, 5], 2.413),
                                             (list(range(1, 11)), 2.555)])
def test_pococks_constants_for_equally_spaced_looks_are_the_published_ones(looks: list[int], constant: float) -> None:
    # Pocock (1977), two-sided 5 %: the same nominal level at every look.
    assert norm.isf(pocock_level(looks) / 2) == pytest.approx(constant, abs=2e-3)


def test_welch_intervals_and_decisions_of_one_comparison() -> None:
    diff, low, high = welch_intervals([60.0, 60.4, 59.8], [61.0, 61.2, 60.9], 0.05)
    assert diff == pytest.approx(61.0333 - 60.0667, abs=1e-3)
    assert low > 0 and high > diff  # a t interval at 95 % with Welch's degrees of freedom
    # No spread and no floor: nothing to judge by, the interval is unbounded (it was [1, 1]: "better").
    assert welch_intervals([1.0, 1.0], [2.0, 2.0], 0.05)[1:] == (-np.inf, np.inf)
    assert list(decide([0.1, -2, -0.4, -0.4, 0.2], [0.9, -0.1, 0.3, 0.6, 0.4], 0.5)) == [
        "better", "worse", "equivalent", "", "better"]  # a real difference wins over the margin
    assert list(decide([-0.4], [0.3], None)) == [""]  # no margin: no equivalence


def test_zero_spread_is_judged_by_the_test_set_floor() -> None:
    # Issue 27: two runs at 10 % and two at 11 % on 100 test images. Each score is a sample of 100 images (3 points
    # of sampling error): Welch with those floors (test_stats.test_welch_with_a_floor_by_hand) at 95 % spans 0.
    _, low, high = welch_intervals([10.0, 10.0], [11.0, 11.0], 0.05, images=100)
    expected = stats.welch([0.10, 0.10], [0.11, 0.11], floor=(0.03, stats.sampling_floor(0.11, 100)))
    assert expected is not None and (low / 100, high / 100) == pytest.approx(expected.ci95, abs=1e-12)
    assert low < 0 < high and decide(low, high, None) == ""
    # A spread above the floor is the runs' own; one number or one per comparison.
    assert welch_intervals([60.0, 60.4, 59.8], [61.0, 61.2, 60.9], 0.05, images=10**6) == welch_intervals(
        [60.0, 60.4, 59.8], [61.0, 61.2, 60.9], 0.05)
    _, lows, _ = welch_intervals([[10.0, 10.0]] * 2, [[11.0, 11.0]] * 2, 0.05, images=np.array([100, 10**9]))
    assert lows[0] < 0 < lows[1]


SPREAD = 0.3
"""Seed-to-seed standard deviation of a run's final accuracy, in points (a small CIFAR run's)."""
IMAGES = 26_667
"""Test images on which sampling alone spreads an accuracy of 60 % by SPREAD: 100 sqrt(0.6 * 0.4 / 26,667) = 0.3
points. Trained networks spread about that much from seed to seed (Jordan, "Calibrated Chaos"): the case where the
floor binds most often."""


def simulate(delta: float, first: int, cap: int, margin: Optional[float] = None, sims: int = 20000,
             seed: int = 0, spread_other: float = SPREAD,
             images: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Each of ``sims`` sweeps' decision and seeds per group when it stopped (the cap when undecided): normal
    accuracies, the other group ``delta`` points better, looked at after every seed from ``first`` to ``cap``;
    ``images``: the floor's test images (None: no floor, the boundary's own calibration)."""
    rng = np.random.default_rng(seed)
    level = pocock_level(range(first, cap + 1))
    base = rng.normal(60.0, SPREAD, (sims, cap))
    other = rng.normal(60.0 + delta, spread_other, (sims, cap))
    decision = np.full(sims, "", dtype="<U10")
    used = np.full(sims, cap)
    for n in range(first, cap + 1):
        _, low, high = welch_intervals(base[:, :n], other[:, :n], level, images)
        now = decide(low, high, margin)
        new = (decision == "") & (now != "")
        decision[new], used[new] = now[new], n
    return decision, used


def bound(rate: float, sims: int) -> float:
    """``rate`` plus three Monte-Carlo standard errors."""
    return rate + 3 * (rate * (1 - rate) / sims) ** 0.5


@pytest.mark.parametrize("first, cap", [(2, 10), (3, 15), (2, 20)])
def test_under_the_null_looking_after_every_round_keeps_false_positives_within_5_percent(first: int, cap: int) -> None:
    decision, _ = simulate(0.0, first, cap)
    false_positive = np.isin(decision, ["better", "worse"]).mean()
    print(f"null, seeds {first}..{cap}: false-positive rate {false_positive:.4f}")
    assert false_positive <= bound(0.05, len(decision))
    assert false_positive > 0.03  # not bought by never deciding anything
    looked_once = simulate(0.0, cap, cap)[0]  # one look at the cap: the plain 5 % test
    assert np.isin(looked_once, ["better", "worse"]).mean() == pytest.approx(0.05, abs=0.006)


def test_unequal_spreads_keep_the_rate_near_5_percent() -> None:
    decision, _ = simulate(0.0, 2, 10, spread_other=2 * SPREAD)
    assert np.isin(decision, ["better", "worse"]).mean() <= bound(0.05, len(decision))


@pytest.mark.parametrize("delta, median, power", [(2 * SPREAD, 5, 0.9), (3 * SPREAD, 4, 0.99)])
def test_a_real_difference_stops_early_in_the_right_direction(delta: float, median: int, power: float) -> None:
    decision, used = simulate(delta, 2, 10)
    print(f"difference {delta / SPREAD:g} sd: decided better {np.mean(decision == 'better'):.3f}, median seeds "
          f"{np.median(used):g}, mean {used.mean():.2f}")
    assert np.mean(decision == "better") >= power
    assert np.median(used) <= median  # the cap is 10
    assert np.mean(decision == "worse") < 1e-3
    worse, _ = simulate(-delta, 2, 10, sims=2000)
    assert np.mean(worse == "worse") >= power - 0.02


def test_the_equivalence_margin_is_decided_when_groups_agree_and_rarely_when_they_differ_by_it() -> None:
    margin = 1.5 * SPREAD
    decision, used = simulate(0.0, 2, 10, margin=margin)
    print(f"null, margin {margin:g}: equivalent {np.mean(decision == 'equivalent'):.3f}, median seeds "
          f"{np.median(used):g}")
    assert np.mean(decision == "equivalent") > 0.4
    assert np.isin(decision, ["better", "worse"]).mean() <= bound(0.05, len(decision))
    at_the_margin, _ = simulate(margin, 2, 10, margin=margin)  # a difference of the margin: not equivalent
    assert np.mean(at_the_margin == "equivalent") <= bound(0.05, len(at_the_margin))
    wide = simulate(0.0, 2, 10, margin=4 * SPREAD)
    assert np.mean(wide[0] == "equivalent") > 0.9 and np.median(wide[1]) <= 5


def test_the_test_set_floor_keeps_the_rate_within_5_percent_and_most_of_the_power() -> None:
    # The floor at its most binding (all of the spread test-set sampling). It widens most intervals (a floored side
    # can also raise Welch's degrees of freedom, which narrows a few): the false-positive rate stays within 5 % (it
    # falls to about 1 %) and the power drops a little (95 % to 93 % at 2 spreads, median seeds 5 to 6).
    for first, cap in [(2, 10), (3, 15), (2, 20)]:
        decision, _ = simulate(0.0, first, cap, images=IMAGES)
        rate = np.isin(decision, ["better", "worse"]).mean()
        print(f"null with the floor, seeds {first}..{cap}: false-positive rate {rate:.4f}")
        assert rate <= bound(0.05, len(decision))
    decision, _ = simulate(0.0, 2, 10, spread_other=2 * SPREAD, images=IMAGES)
    assert np.isin(decision, ["better", "worse"]).mean() <= bound(0.05, len(decision))
    for delta, power, median in ((2 * SPREAD, 0.9, 6), (3 * SPREAD, 0.99, 5)):
        decision, used = simulate(delta, 2, 10, images=IMAGES)
        print(f"difference {delta / SPREAD:g} sd with the floor: better {np.mean(decision == 'better'):.3f}, median "
              f"seeds {np.median(used):g}, mean {used.mean():.2f}")
        assert np.mean(decision == "better") >= power and np.median(used) <= median
        assert np.mean(decision == "worse") < 1e-3
    margin = 1.5 * SPREAD
    decision, _ = simulate(0.0, 2, 10, margin=margin, images=IMAGES)
    assert np.mean(decision == "equivalent") > 0.3
    at_the_margin, _ = simulate(margin, 2, 10, margin=margin, images=IMAGES)
    assert np.mean(at_the_margin == "equivalent") <= bound(0.05, len(at_the_margin))


# --- the CLI, rounds end to end with a fake trainer ----------------------------------------------------------------

NOISE = [0.3, -0.3, 0.2, -0.2, 0.1, -0.1, 0.25, -0.25, 0.15, -0.15]
"""Each seed's deviation of a run's accuracy from its group's, in points (seed 0, 1, ...)."""


def faked(accuracy: dict[str, float], calls: list[list[str]], fail: Sequence[str] = (),
          noise: Sequence[float] = NOISE, images: int = 10**6) -> Any:
    """A ``run_round`` whose trainer leaves, for each trial, what a finished run leaves (its config, final weights and
    an evaluation of accuracy ``accuracy[learning rate] + noise[seed]`` points on ``images`` test images); a trial
    named in ``fail`` leaves nothing, and the round exits 1 as a sweep with a failed trial does."""
    def run_round(sweep: Sweep, trials: Sequence[Trial], parallel: int) -> int:
        calls.append([trial.name for trial in trials])
        for trial in trials:
            if trial.name in fail:
                continue
            settings = dict(setting.split("=", 1) for setting in trial.settings)
            run = RunDir(sweep.run_dir(trial).root)
            run.root.mkdir(parents=True)
            run.config.write_text(to_yaml(sweep.configs[trial.index]))
            points = accuracy[settings["optim.lr"]] + noise[int(settings["train.seed"])]
            run.metrics.write_text(json.dumps({"step": 8, "test/loss": 1.0, "test/acc": points / 100,
                                               "test/images": images}) + "\n")
            run.weights.write_bytes(b"not really weights")
        return 1 if fail else 0
    return run_round


def until(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accuracy: dict[str, float], *flags: str,
          fail: Sequence[str] = (), lrs: Sequence[float] = (0.01, 0.05, 0.1), noise: Sequence[float] = NOISE,
          images: int = 10**6) -> tuple[int, list[list[str]], Path]:
    file = write(tmp_path, spec(overrides=[item for item in SMALL if not item.startswith("optim.lr")],
                                grid={"optim.lr": list(lrs)}, seeds=[0, 1]))
    calls: list[list[str]] = []
    monkeypatch.setattr(sequential, "run_round", faked(accuracy, calls, fail, noise, images))
    code = sweeps.main([str(file), "--until-decided", *flags, f"train.output_dir={tmp_path / 'runs'}"])
    return code, calls, file


def test_rounds_add_a_seed_until_each_group_is_decided_or_the_cap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # lr=0.05 is 1.5 points better than the baseline lr=0.01; lr=0.1 the same: undecided without a margin.
    code, calls, file = until(tmp_path, monkeypatch, {"0.01": 60.0, "0.05": 61.5, "0.1": 60.0}, "--max-seeds", "4")
    out = lines(capsys.readouterr().out)
    assert code == 0, out
    assert calls[0] == ["lr=0.01-seed=0", "lr=0.01-seed=1", "lr=0.05-seed=0", "lr=0.05-seed=1", "lr=0.1-seed=0",
                        "lr=0.1-seed=1"]
    assert calls[1] == ["lr=0.01-seed=2", "lr=0.05-seed=2", "lr=0.1-seed=2"]
    assert calls[2:] == [["lr=0.01-seed=3", "lr=0.1-seed=3"]]  # lr=0.05 decided after 3 seeds; the cap is 4
    assert out[-2].startswith("sweep s: optim.lr=0.05 vs optim.lr=0.01: better after 3 seeds (+1.50 points")
    assert out[-1].startswith("sweep s: optim.lr=0.1 vs optim.lr=0.01: undecided at the cap of 4 seeds (+0.00 points")
    # The rounds grew the sweep's record: new indices after the recorded ones, kept when the file lists fewer.
    assert sweeps.main(["--list", str(file), f"train.output_dir={tmp_path / 'runs'}"]) == 0
    listed = [line.split("\t")[:3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed[6:] == [["6", "not in the file (finished)", "lr=0.01-seed=2"],
                          ["7", "not in the file (finished)", "lr=0.05-seed=2"],
                          ["8", "not in the file (finished)", "lr=0.1-seed=2"],
                          ["9", "not in the file (finished)", "lr=0.01-seed=3"],
                          ["10", "not in the file (not started)", "lr=0.05-seed=3"],
                          ["11", "not in the file (finished)", "lr=0.1-seed=3"]]

    # Run again: every look is replayed from the finished runs, nothing trains, the same decisions.
    assert until(tmp_path, monkeypatch, {}, "--max-seeds", "4")[:2] == (0, [])
    assert lines(capsys.readouterr().out)[-2:] == out[-2:]


def test_a_margin_decides_equal_groups_equivalent_and_the_sweep_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, calls, _ = until(tmp_path, monkeypatch, {"0.01": 60.0, "0.1": 60.0}, "--margin", "1", "--max-seeds", "8",
                           lrs=(0.01, 0.1))
    out = lines(capsys.readouterr().out)
    assert code == 0, out
    assert out[-1].startswith("sweep s: optim.lr=0.1 vs optim.lr=0.01: equivalent after ")
    decided_after = int(out[-1].split(" after ")[1].split()[0])
    assert 3 <= decided_after < 8 and len(calls) == decided_after - 1  # stopped before the cap


def test_runs_that_repeat_one_score_decide_nothing_below_the_test_set_floor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Every seed scores the same: 10 % at lr 0.01, 11 % at lr 0.1, on 100 test images (one image apart). It said
    # "better after 2 seeds"; judged by the test set's sampling error (3 points) it stays undecided up to the cap.
    code, calls, _ = until(tmp_path, monkeypatch, {"0.01": 10.0, "0.1": 11.0}, "--max-seeds", "4", lrs=(0.01, 0.1),
                           noise=[0.0] * 10, images=100)
    out = lines(capsys.readouterr().out)
    assert code == 0 and len(calls) == 3, out
    assert out[-1].startswith("sweep s: optim.lr=0.1 vs optim.lr=0.01: undecided at the cap of 4 seeds (+1.00 points")


def test_a_failed_round_exits_with_the_sweeps_code_and_running_again_continues(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    accuracy = {"0.01": 60.0, "0.05": 64.0}
    code, calls, _ = until(tmp_path, monkeypatch, accuracy, fail=["lr=0.05-seed=1"], lrs=(0.01, 0.05))
    assert code == 1 and len(calls) == 1
    assert lines(capsys.readouterr().out)[-1] == ("sweep s: not every trial of this round finished: nothing decided "
                                                  "with 2 seeds; run the same command again to continue")
    code, calls, _ = until(tmp_path, monkeypatch, accuracy, lrs=(0.01, 0.05))
    assert code == 0 and calls[0] == ["lr=0.05-seed=1"]
    assert lines(capsys.readouterr().out)[-1].startswith("sweep s: optim.lr=0.05 vs optim.lr=0.01: better after ")


BAD_FLAGS = {
    "max seeds alone": (["--max-seeds", "5"], {}, "--max-seeds goes with --until-decided"),
    "margin alone": (["--margin", "0.5"], {}, "--margin goes with --until-decided"),
    "cap below the file's seeds": (["--until-decided", "--max-seeds", "1"], {}, "--max-seeds 1: "),
    "no margin": (["--until-decided", "--margin", "0"], {}, "--margin 0: give a positive number"),
    "with a trial": (["--until-decided", "--trial", "0"], {}, "not with --trial"),
    "one seed": (["--until-decided"], {"seeds": [0]}, "needs at least 2"),
    "no seeds": (["--until-decided"], {"seeds": None}, "needs at least 2"),
    "one group": (["--until-decided"], {"grid": None}, "has one group"),
}


@pytest.mark.parametrize("case", BAD_FLAGS, ids=list(BAD_FLAGS))
def test_bad_flags_are_one_line_with_exit_2_and_nothing_written(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags, changes, expected = BAD_FLAGS[case]
    content = {**spec(overrides=[item for item in SMALL if not item.startswith("optim.lr")],
                      grid={"optim.lr": [0.01, 0.05]}, seeds=[0, 1]), **changes}
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump({key: value for key, value in content.items() if value is not None}))
    assert sweeps.main([str(file), *flags, f"train.output_dir={tmp_path / 'runs'}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith("cifarlab: error: ") and expected in captured.err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, expected", [(["S.yaml", "--until-decided", "--list"], "not allowed with argument"),
                                            (["S.yaml", "--until-decided", "--margin", "x"], "invalid float value")])
def test_flags_argparse_refuses(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        sweeps.parse_args(argv)
    assert exit_.value.code == 2 and expected in capsys.readouterr().err.splitlines()[-1]


def test_the_sweep_command_imports_no_numpy_or_scipy_until_it_decides() -> None:
    probe = ("import sys, cifarlab.sweep; "
             "print(sorted(m for m in ('torch', 'numpy', 'scipy', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=cli_env(), timeout=60,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_until_decided_runs_rounds_of_trainers_and_decides_on_their_records(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The trials run tests/fake_trainer.py, which keeps the real trainer's outside contract: it scores lr=0.05 about 0.9
    # points above lr=0.01, each seed a little off, on 100,000 test images (a floor of 0.16 points): undecided after
    # 2 seeds, better after 3.
    file = write(tmp_path, spec(name="decide", grid={"optim.lr": [0.01, 0.05]}, seeds=[0, 1],
                                overrides=[*SMALL, "data.test_size=100000"]))
    assert sweeps.main([str(file), "--until-decided", "--max-seeds", "4", "--parallel", "2",
                        f"train.output_dir={tmp_path / 'runs'}", "--trainer", FAKE_TRAINER]) == 0
    out = lines(capsys.readouterr().out)
    assert out[0].startswith("sweep decide: until decided: 1 comparison(s) with the baseline optim.lr=0.01; ")
    assert [line for line in out if re.match(r"sweep decide: \d seeds: ", line)] == [
        "sweep decide: 2 seeds: 4 trial(s) to run for the baseline and 1 undecided group(s)",
        "sweep decide: 3 seeds: 2 trial(s) to run for the baseline and 1 undecided group(s)"]
    assert re.fullmatch(r"sweep decide: after 2 seeds: optim\.lr=0\.05 vs optim\.lr=0\.01: \+\d\.\d\d points, "
                        r"interval \[-\d\.\d\d, \+\d\.\d\d\]: undecided", out[out.index(
                            "sweep decide: 3 seeds: 2 trial(s) to run for the baseline and 1 undecided group(s)") - 1])
    assert out[-1].startswith("sweep decide: optim.lr=0.05 vs optim.lr=0.01: better after 3 seeds (+")
    # Decided on the trials' own records: the difference shown is that of their final accuracies.
    folder = tmp_path / "runs" / "decide"
    finished = sorted(run.parent.name for run in folder.glob("*/model.safetensors"))
    assert finished == sorted(f"lr={lr}-seed={seed}" for lr in ("0.01", "0.05") for seed in range(3))
    assert all(FAKE_TRAINER in log.read_text() for log in (folder / "logs").glob("*.log"))  # every round's trainer
    points = {lr: [100 * (read_run(folder / f"lr={lr}-seed={seed}").final_accuracy() or 0) for seed in range(3)]
              for lr in ("0.01", "0.05")}
    assert f"({np.mean(points['0.05']) - np.mean(points['0.01']):+.2f} points" in out[-1]
