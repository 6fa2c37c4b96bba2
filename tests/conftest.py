"""Shared helpers: run the real CLI in a subprocess, find the shared CIFAR-10 copy."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import torch
from hypothesis import HealthCheck, settings
from safetensors.torch import load_file

from cifarlab.analysis import results
from cifarlab.analysis.results import per_class  # noqa: F401 - the tests' name for it
from cifarlab.run.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def run_cli(args: list[str], cwd: Path, processes: int = 1, module: str = "cifarlab.train",
            timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``accelerate launch -m MODULE ARGS`` with 1 process, or N gloo processes on the CPU."""
    return subprocess.run([*launch_command(processes, module), *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def launch_command(processes: int, module: str = "cifarlab.train") -> list[str]:
    """``accelerate launch`` of ``module`` (a module name, or a script path ending in .py)."""
    launch = ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--num_processes", "1"]
    target = [module] if module.endswith(".py") else ["-m", module]
    return [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", *target]


KILL_IN_SAVE = str(Path(__file__).with_name("kill_in_save.py"))
"""A trainer that dies in its N-th save: ``python KILL_IN_SAVE N ARGS`` (see that file)."""


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("WANDB_API_KEY", None)  # tests never go online
    # A W&B run in this process (an in-process run, test_wandb_offline) leaves the address of its wandb-core here: a
    # child would log through this process's service instead of starting its own, as it does outside the tests.
    env.pop("WANDB_SERVICE", None)
    return env


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m cifarlab.train ARGS``: the trainer's own exit code, without a launcher around it."""
    return subprocess.run([sys.executable, "-m", "cifarlab.train", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=300)


def smoke(tmp_path: Path, run_name: str, *overrides: str) -> list[str]:
    """Arguments for a smoke run writing under ``tmp_path/runs``, W&B off unless overridden."""
    return ["--config", str(CONFIGS / "smoke.yaml"), f"train.output_dir={tmp_path / 'runs'}",
            f"train.run_name={run_name}", "logging.wandb.mode=disabled", *overrides]


def check(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
                                    f"stderr:\n{result.stderr[-3000:]}")
    return result


def in_process(args: list[str], capture: pytest.CaptureFixture[str], module: str = "cifarlab.train"
               ) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` in this process, through the command's own ``main(argv)``: its exit code and what
    it printed (``capture``: capsys, or capfd for what C code writes too), as a CompletedProcess, so that check()
    and the one-error-line assertions read it as they read a subprocess's. For whatever needs no process of its
    own: refusals, errors before or during training, resumes, evaluations; signals, launchers, several processes
    and start-up imports keep their subprocesses."""
    command = importlib.import_module(module)
    earlier = capture.readouterr()
    environment = dict(os.environ)
    fresh_accelerate()
    try:
        with signal_handlers_kept():
            code = command.main(args)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code if isinstance(exit.code, int) else 1
    finally:
        fresh_accelerate()
        # What the command set there (W&B's service address) would have died with its process: processes this one
        # starts later (a sweep's trainers) must not inherit it.
        os.environ.clear()
        os.environ.update(environment)
    out, err = capture.readouterr()
    # Written back, so that a failing test shows it among its captured output.
    sys.stdout.write(earlier.out + out)
    sys.stderr.write(earlier.err + err)
    return subprocess.CompletedProcess([module, *args], code, out, err)


@contextmanager
def signal_handlers_kept() -> Iterator[None]:
    """The stop signals' handlers as they were, after the block: a command that has ended ignores stop signals until
    its process exits (cifarlab.train), and this one goes on (pytest must still stop on Ctrl-C)."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def fresh_accelerate() -> None:
    """Forget Accelerate's per-process state (one AcceleratorState and GradientState per process): the next
    Accelerator, in-process run or command starts as a new process's would."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def records(run_dir: Path) -> list[dict]:
    """Every record of a run's metrics.jsonl (cifarlab's own reader), which must exist."""
    assert RunDir(run_dir).metrics.is_file(), f"no metrics.jsonl in {run_dir}"
    return results.records(run_dir)


def metrics(run_dir: Path) -> list[dict]:
    """The evaluation records of a run's metrics.jsonl (the ones with test/acc), in order."""
    return [record for record in records(run_dir) if results.is_evaluation(record)]


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    """Bitwise equal final weights (atol=0), or equal within ``atol``."""
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for key in first:
        if atol == 0.0:
            assert torch.equal(first[key], second[key]), key
        else:
            torch.testing.assert_close(first[key], second[key], atol=atol, rtol=0, msg=key)


def crashed_copy(run_dir: Path, copy: Path, last: str) -> Path:
    """A copy of the finished run ``run_dir`` at ``copy`` as if its process had died right after saving
    checkpoint ``last`` (e.g. "step_00000010"): no final weights, no later checkpoints, ``latest`` on it."""
    shutil.copytree(run_dir, copy)
    (copy / "model.safetensors").unlink()
    for later in RunDir(copy).step_checkpoints():
        if later.name > last:  # zero-padded step numbers sort as text
            shutil.rmtree(later)
    (copy / "checkpoints" / "latest").write_text(last)
    return copy


class Background:
    """A CLI run in its own process group, its output in a file, for tests that interrupt it."""

    def __init__(self, command: list[str], cwd: Path, log: Path, **env: str) -> None:
        self.log = log
        self.handle = open(log, "w")
        self.process = subprocess.Popen(command, cwd=cwd, env=cli_env(**env), stdout=self.handle,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not seen (exit {self.process.poll()}):\n{self.output()[-3000:]}")

    def signal(self, signum: int, tree: bool = False) -> None:
        """Signal the launched process, or (``tree``) it and every process below it: torchrun starts
        its workers in sessions of their own, so a process group does not reach them."""
        targets = [self.process.pid]
        if tree:
            targets += self.descendants()
        for pid in targets:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass  # already gone

    def descendants(self) -> list[int]:
        try:
            return [child.pid for child in psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL, tree=True)
            raise
        finally:
            self.handle.close()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cifarlab: error:")]


@pytest.fixture(autouse=True)
def _fresh_accelerate() -> Iterator[None]:
    """In-process tests build Accelerators with different settings: Accelerate keeps one state per process. And a
    command's ``main`` called directly leaves the stop signals ignored (as its process would exit next): put back, so
    that pytest still stops on Ctrl-C and the next test's signals act."""
    fresh_accelerate()
    with signal_handlers_kept():
        yield
    fresh_accelerate()


# --- reference runs, trained once per session in this process ------------------------------------------------------
# Tests compare against them or start from copies of them. They are trained in-process (cifarlab.train's main, as
# `python -m cifarlab.train` would run them): on 1 CPU process with the same config and seed a run is bitwise the
# subprocess run (test_fault_tolerance's retention test checks it). A test that writes into one works on a copy
# (shutil.copytree, crashed_copy): the folders are shared by every test of the session.

SMALL = ("data.train_size=512", "checkpoint.every_n_steps=4", "checkpoint.keep_last=100", "logging.every_n_steps=1")
"""512 images in batches of 32: 16 steps per epoch, 32 in all; checkpoints every 4 steps, all kept; every step
logged. What test_fault_tolerance and test_reliability interrupt, kill and resume."""


def trained(tmp_path_factory: pytest.TempPathFactory, name: str, *overrides: str) -> Iterator[Path]:
    """A smoke run with ``overrides`` trained in this process under a fresh session folder: its run directory, for
    the session. At the end of the session it must be as it was trained (a test that wrote into it would have
    changed what the tests after it saw)."""
    from cifarlab import train

    root = tmp_path_factory.mktemp(name)
    fresh_accelerate()
    try:
        with signal_handlers_kept():
            assert train.main(smoke(root, name, *overrides)) == 0, f"the {name} reference run failed"
    finally:
        fresh_accelerate()
    run_dir = root / "runs" / name
    before = _fingerprint(run_dir)
    yield run_dir
    assert _fingerprint(run_dir) == before, f"a test wrote into the session's {name} reference run {run_dir}"


def _fingerprint(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="session")
def small_reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished SMALL run (every checkpoint kept): what every interrupted SMALL run must end as."""
    yield from trained(tmp_path_factory, "small", *SMALL)


@pytest.fixture(scope="session")
def smoke_reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished run of configs/smoke.yaml as it is (2 epochs of 8 steps, W&B off), every checkpoint kept
    (step_00000005, _08, _10, _15, _16)."""
    yield from trained(tmp_path_factory, "smoke", "checkpoint.keep_last=100")


@pytest.fixture(scope="session")
def one_epoch_reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished one-epoch smoke run: its final weights, best/ and its last step checkpoint are one model."""
    yield from trained(tmp_path_factory, "one-epoch", "train.epochs=1")


@pytest.fixture(scope="session")
def launched_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """``accelerate launch`` of a 1-process smoke run under umask 022, W&B offline, EMA on, that stops at the target
    accuracy it reaches after epoch 1 of 3 (fake data is random: 10 % comes at once); its run directory and what
    it printed. A process of its own: the run record holds its command line. test_run_record reads the run record,
    the target and what W&B holds; test_file_modes the modes of every file it wrote."""
    from wandb_offline import find_run_files, wait_for_exit

    root = tmp_path_factory.mktemp("launched")
    result = check(subprocess.run([*launch_command(1), *smoke(root, "target", "train.epochs=3",
                                                              "train.target_accuracy=0.01",
                                                              "logging.wandb.mode=offline", "train.ema=0.9")],
                                  cwd=root, env=cli_env(), capture_output=True, text=True, timeout=300,
                                  preexec_fn=lambda: os.umask(0o022)))
    run_dir = root / "runs" / "target"
    for file in find_run_files(run_dir / "wandb"):
        wait_for_exit(file)  # wandb-core may still be closing it after the trainer has gone
    before = _fingerprint(run_dir)
    yield run_dir, result
    assert _fingerprint(run_dir) == before, f"a test wrote into the session's launched run {run_dir}"


@pytest.fixture(scope="session")
def cifar10_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real CIFAR-10 JPEG copy from ../shared, extracted once per session (skip when absent), and removed at its
    end: its 60,000 files would otherwise be deleted by a later session's start (pytest keeps 3 sessions' folders),
    seconds that a `pytest -m unit` run after a full one paid."""
    if not SHARED_TARBALL.is_file():
        pytest.skip(f"{SHARED_TARBALL} not found: the real-data tests need ../shared beside the checkout")
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(SHARED_TARBALL) as archive:
        archive.extractall(root, filter="data")
    yield root
    shutil.rmtree(root, ignore_errors=True)


# --- the sweep runner's stand-in trainer (issue 28) --------------------------------------------------------------

FAKE_TRAINER = str(Path(__file__).with_name("fake_trainer.py"))
"""A stand-in for cifarlab.train with its outside contract that trains nothing (see that file): the sweep's trials
run it with ``python -m cifarlab.sweep ... --trainer FAKE_TRAINER`` (tests/test_trainer_contract.py holds both
trainers to one table)."""


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 180, every: float = 0.05) -> None:
    """Poll ``condition`` every ``every`` seconds until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


# --- In-process runs, and several runs in one 2-process launch (issue 28: a process only where one is tested) ------

def train_here(tmp_path: Path, name: str, *options: str) -> Path:
    """A 1-process smoke run (:func:`smoke`) with ``options`` in this process (``loop.train``, as a notebook calls
    it): the trainer of ``python -m cifarlab.train`` without an interpreter's start-up. Returns its run directory."""
    from cifarlab.config import load_config
    from cifarlab.run import loop

    fresh_accelerate()
    try:
        return loop.train(load_config(str(CONFIGS / "smoke.yaml"), smoke(tmp_path, name, *options)[2:]))
    finally:
        fresh_accelerate()


TWO_PROCESSES = str(Path(__file__).with_name("two_processes.py"))


def run_two(cwd: Path, *runs: list[str], timeout: int = 600) -> list[subprocess.CompletedProcess[str]]:
    """``runs`` (the trainer's argument lists, or a script's: ``[path.py, args...]``) one after the other on 2 gloo
    processes, in one launch (tests/two_processes.py). One CompletedProcess a run: the exit code both ranks
    returned (asserted equal), what rank 0 then rank 1 printed on stdout and on stderr."""
    out = cwd / f".two-{time.monotonic_ns()}"
    out.mkdir()
    arguments = [item for index, run in enumerate(runs) for item in ([] if index == 0 else ["---"]) + run]
    launched = subprocess.run([*launch_command(2, TWO_PROCESSES), str(out), *arguments], cwd=cwd, env=cli_env(),
                              capture_output=True, text=True, timeout=timeout)
    found = []
    for index in range(len(runs)):
        ranks = [f"{out}/{index}.{rank}" for rank in (0, 1)]
        if not all(Path(f"{rank}.exit").is_file() for rank in ranks):
            raise AssertionError(f"run {index} of {len(runs)} did not finish (launch exit {launched.returncode}):\n"
                                 f"{launched.stdout[-3000:]}\n{launched.stderr[-3000:]}")
        codes = {int(Path(f"{rank}.exit").read_text()) for rank in ranks}
        assert len(codes) == 1, f"run {index}: the ranks returned {codes}"
        found.append(subprocess.CompletedProcess(runs[index], codes.pop(),
                                                 "".join(Path(f"{rank}.out").read_text() for rank in ranks),
                                                 "".join(Path(f"{rank}.err").read_text() for rank in ranks)))
    assert launched.returncode == 0, launched.stderr[-3000:]
    return found


def assert_one_and_two_processes_agree_and_resume_exactly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], *options: str,
        launched: tuple[Path, subprocess.CompletedProcess[str]] | None = None) -> Path:
    """Smoke runs with ``options`` (which set data.test_size=37 and checkpoint.keep_last=100): 1 and 2 processes
    agree within 1e-6 and count 37 test images per evaluation, predictions come back in dataset order, and a run
    resumed mid-epoch (step 5) ends bitwise where the 1-process run did. Returns that run's directory. The 1-process
    runs (the whole run and the resumed one) run in this process through the trainer's ``main()``; only the
    2-process run is launched, or ``launched`` already (its run directory and outcome, with the same ``options``)."""
    first = check(in_process(smoke(tmp_path, "one", *options), capsys))
    two, second = launched or (tmp_path / "runs" / "two",
                               run_cli(smoke(tmp_path, "two", *options), tmp_path, processes=2))
    check(second)
    assert "1 process(es)" in first.stdout and "2 process(es)" in second.stdout
    assert second.stdout.count("test accuracy") == first.stdout.count("test accuracy")  # the main process prints
    one = tmp_path / "runs" / "one"
    assert [m["test/images"] for m in metrics(one)] == [m["test/images"] for m in metrics(two)] == [37, 37]
    assert_same_weights(one / "model.safetensors", two / "model.safetensors", atol=1e-6)
    # Per-image predictions come back in dataset order whatever the process count.
    ones, twos = load_file(str(RunDir(one).predictions)), load_file(str(RunDir(two).predictions))
    assert torch.equal(ones["labels"], twos["labels"]) and ones["labels"].shape == (37,)
    assert torch.equal(ones["predictions"], twos["predictions"])
    mid_epoch = one / "checkpoints" / "step_00000005"  # 8 steps per epoch: 5 is mid-epoch 1
    assert json.loads((mid_epoch / "trainer_state.json").read_text())["step_in_epoch"] == 5
    resumed = check(in_process(smoke(tmp_path, "resumed", *options, f"train.resume={mid_epoch}"), capsys))
    assert "resumed from" in resumed.stdout
    resumed_dir = tmp_path / "runs" / "resumed"
    assert_same_weights(one / "model.safetensors", resumed_dir / "model.safetensors")
    assert [m["test/acc"] for m in metrics(resumed_dir)] == [m["test/acc"] for m in metrics(one)]
    assert torch.equal(load_file(str(RunDir(resumed_dir).predictions))["logits"], ones["logits"])
    return one


# --- property tests (Hypothesis; tests/test_properties_*.py) ---------------------------------------------------------
# The default profile is CI's: each property tries 25 examples, drawn from a fixed seed (derandomize) with no example
# database, so that every run tries the same inputs and a red run repeats; the whole set takes about 15 s on 2 cores
# (tests/README.md). The deadline is per example: 5 s, ten times the slowest example's half a second (a sweep of 36
# trials read twice), so that a loaded 2-core machine never trips it, while a run-away example still does.
# `pytest --hypothesis-profile=thorough` searches deeper, from a random seed each run, for local runs (minutes); a
# failure it finds is kept as an @example of its test.
settings.register_profile("ci", max_examples=25, derandomize=True, database=None, deadline=5000,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, derandomize=False, database=None, deadline=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")  # `--hypothesis-profile NAME` (Hypothesis's pytest plugin) loads another after this

TIERS = ("unit", "integration", "slurm")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is in exactly one tier (tests/README.md): ``-m unit`` and ``-m "not unit"`` split the suite."""
    wrong = [f"{item.nodeid}: {tiers or 'no tier'}" for item in items
             if len(tiers := [tier for tier in TIERS if item.get_closest_marker(tier)]) != 1]
    if wrong:
        raise pytest.UsageError("each test needs exactly one of the markers " + ", ".join(TIERS) + ": "
                                + "; ".join(wrong[:5]))
