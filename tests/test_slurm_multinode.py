"""slurm/train_multinode.sbatch on a real two-node SLURM cluster (tests/slurm_multinode.sh).

The two nodes are slurmd daemons in network namespaces of their own on this machine, each with its own
hostname and address on a private bridge; the job runs one CPU process per node, joined over gloo
across that bridge, the run directory on the (shared) local filesystem. It must end with the weights
of a one-process run of the same config, also when it is preempted mid-run: every rank checkpoints at
the same step, the job is requeued once, resumes on both nodes and finishes.

The cluster comes from ``CIFARLAB_MULTINODE_SLURM_CONF`` (``eval "$(tests/slurm_multinode.sh start)"``,
as .ci/run does); without it this module starts one of its own and stops it afterwards, and skips
where that is impossible (not root, no network namespaces, SLURM not installed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_slurm import _held, _slurm, _start_now, _state, _wait  # one copy of the SLURM client helpers

from conftest import CONFIGS, REPO, assert_same_weights, check, run_python, smoke, weights

pytestmark = pytest.mark.slurm

CLUSTER = REPO / "tests" / "slurm_multinode.sh"
SBATCH = REPO / "slurm" / "train_multinode.sbatch"
# 512 images in global batches of 32: 16 steps per epoch, 32 in all; with 2 processes the ranks agree on a
# stop every 8 steps at first (cifarlab.run.preemption.CHECK_EVERY; steps this short are then checked
# every few hundred, past the run), so a preemption lands at step 8, 16 or 24.
OVERRIDES = ("data.train_size=512", "checkpoint.every_n_steps=4", "logging.every_n_steps=4",
             "logging.wandb.mode=disabled")
STEPS = 32


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """The environment for SLURM clients of the two-node cluster (its SLURM_CONF)."""
    conf, started = os.environ.get("CIFARLAB_MULTINODE_SLURM_CONF"), None
    if not conf:
        if shutil.which("sbatch") is None:
            pytest.skip("sbatch not found: apt-get install slurmctld slurmd slurm-client munge iproute2")
        if os.geteuid() != 0:
            pytest.skip("the two-node cluster needs root (network namespaces, a bridge, SLURM daemons)")
        # The script picks a new state directory under /tmp (not pytest's: munged wants every folder above
        # its socket open to all) and prints it.
        result = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=120,
                                env={k: v for k, v in os.environ.items() if k != "CIFARLAB_MULTINODE_DIR"})
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", result.stdout, re.MULTILINE))
        started = exports.get("CIFARLAB_MULTINODE_DIR")
        if result.returncode != 0 or "CIFARLAB_MULTINODE_SLURM_CONF" not in exports:
            pytest.skip(f"the two-node cluster cannot start here: {result.stderr.strip()[-500:]}")
        conf = exports["CIFARLAB_MULTINODE_SLURM_CONF"]
    env = {**os.environ, "SLURM_CONF": conf}
    try:
        ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True)
        if "UP" not in ping.stdout:
            answer = ping.stdout.strip() or ping.stderr.strip()
            pytest.skip(f"the two-node cluster's controller does not answer ({answer})")
        yield env
    finally:
        if started:
            subprocess.run([str(CLUSTER), "stop"], env={**os.environ, "CIFARLAB_MULTINODE_DIR": started},
                           capture_output=True, timeout=180)
            shutil.rmtree(started, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The final weights of one process trained with the same config, no SLURM."""
    tmp_path = tmp_path_factory.mktemp("reference")
    check(run_python(smoke(tmp_path, "reference", *OVERRIDES), tmp_path))
    return tmp_path / "runs" / "reference" / "model.safetensors"


def _submit(env: dict[str, str], tmp_path: Path) -> tuple[str, Path]:
    """The multi-node script on both nodes, one CPU process (and one CPU) per node."""
    job = _slurm(env, "sbatch", "--parsable", "--nodes=2", "--cpus-per-task=1", f"--chdir={tmp_path}",
                 "--export=ALL," + ",".join([f"CIFARLAB_PYTHON={sys.executable}", f"CIFARLAB_REPO={REPO}",
                                             f"CIFARLAB_CONFIG={CONFIGS / 'smoke.yaml'}",
                                             f"CIFARLAB_OUTPUT_DIR={tmp_path / 'runs'}", "WANDB_SILENT=true"]),
                 str(SBATCH), *OVERRIDES)
    return job, tmp_path / f"slurm-cifarlab-multinode-{job}.out"


def _finish(env: dict[str, str], job: str, log: Path, timeout: float = 240) -> None:
    def finished() -> bool:
        state = _state(env, job)[0]
        if state == "PENDING":
            # A requeued job is held for 120 s (BeginTime); skip that. Repeated: SLURM may set the hold
            # again once the old run has completed, after an early update.
            _start_now(env, job)
            time.sleep(1)
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            raise AssertionError(f"job {job} {state}")
        return state == "COMPLETED"

    try:
        _wait(finished, f"job {job} to finish", timeout=timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{_slurm(env, 'scontrol', 'show', 'job', job)}\n{_slurm(env, 'sinfo', '-N')}\n"
                             f"{log.read_text()[-4000:] if log.is_file() else 'no log'}") from None


def _nodes(env: dict[str, str]) -> list[str]:
    return _slurm(env, "sinfo", "-h", "-N", "-p", "debug", "-o", "%N").split()


def _assert_on_both_nodes(text: str, nodes: list[str], starts: int = 1) -> None:
    for rank, node in enumerate(nodes):
        assert text.count(f"cifarlab: node {node} ({node}) is machine rank {rank} of 2, 1 process(es)") == starts, text
    assert text.count(f"rendezvous {nodes[0]}:") == starts and text.count("2 process(es) on cpu") == starts, text


def _assert_close(reference: Path, run: Path) -> float:
    """Equal within 1e-6 (absolute, and relative to each tensor's largest weight); returns the largest difference."""
    assert_same_weights(reference, run, atol=1e-6)
    ours, theirs = weights(reference), weights(run)
    relative = max(float((ours[k] - theirs[k]).abs().max() / ours[k].abs().max()) for k in ours)
    assert relative <= 1e-6, relative
    return max(float((ours[k] - theirs[k]).abs().max()) for k in ours)


def test_two_nodes_train_the_one_process_model(cluster: dict[str, str], reference: Path, tmp_path: Path) -> None:
    job, log = _submit(cluster, tmp_path)
    _finish(cluster, job, log)
    text = log.read_text()
    _assert_on_both_nodes(text, _nodes(cluster))
    assert "srun exited with status 0" in text
    difference = _assert_close(reference, tmp_path / "runs" / f"slurm-{job}" / "model.safetensors")
    print(f"2 nodes vs 1 process: largest weight difference {difference:.3g}")


def test_preempted_two_node_job_checkpoints_every_rank_requeues_and_resumes(
        cluster: dict[str, str], reference: Path, tmp_path: Path) -> None:
    job, log = _submit(cluster, tmp_path)
    with _held(log, f"epoch 1 step 4/{STEPS // 2}", f"train.output_dir={tmp_path / 'runs'}", processes=2):
        # Needs every CPU of both nodes, in a partition of higher priority: SLURM preempts our job (USR1 to the
        # batch shell at once, passed on through srun and torchrun's agents; TERM after the 10 s grace time).
        urgent = _slurm(cluster, "sbatch", "--parsable", "--partition=urgent", "--nodes=2", "--cpus-per-task=2",
                        f"--chdir={tmp_path}", "--output=/dev/null", "--wrap", "sleep 1")
    _wait(lambda: "srun exited with status" in log.read_text(), "the trainers to stop")
    text = log.read_text()
    stopped = re.search(r"stopped on (.+?) at step (\d+): checkpoint (\S+) saved", text)
    assert stopped, text
    # relative to the job's folder (--chdir), where the trainer runs (files.typed)
    step, checkpoint = int(stopped.group(2)), tmp_path / stopped.group(3)
    assert stopped.group(1) == "SIGUSR1" and 4 < step < STEPS and step % 8 == 0, stopped.group(0)
    assert checkpoint.name == f"step_{step:08d}"
    # Saved by every rank at that one step: both ranks' RNG states, and the trainer state at the stop step.
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(manifest["files"]), manifest["files"].keys()
    assert manifest["global_step"] == step
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    _wait(lambda: _state(cluster, urgent)[0] == "COMPLETED", "the urgent job", timeout=120)
    _wait(lambda: _state(cluster, job) == ("PENDING", 1), "the job to be requeued")
    # slurmd compares job credential times in whole seconds: a restart within the second of the requeue
    # is killed as "Job credential revoked" (see tests/test_slurm.py).
    time.sleep(2)
    _finish(cluster, job, log)
    assert _state(cluster, job) == ("COMPLETED", 1)
    text = log.read_text()
    # relative to the job's folder (--chdir), where the trainer runs: files.typed
    assert "restart 1" in text and f"resumed from {checkpoint.relative_to(tmp_path)}" in text, text[-4000:]
    _assert_on_both_nodes(text, _nodes(cluster), starts=2)
    difference = _assert_close(reference, tmp_path / "runs" / f"slurm-{job}" / "model.safetensors")
    print(f"preempted at step {step}, resumed on 2 nodes vs 1 process: largest weight difference {difference:.3g}")


def test_each_node_gets_the_cpus_the_job_asked_for_each_task(cluster: dict[str, str], tmp_path: Path) -> None:
    # srun does not pass the job's --cpus-per-task on by itself (Slurm >= 22.05): the script does.
    job = _slurm(cluster, "sbatch", "--parsable", "--nodes=2", "--cpus-per-task=2", f"--chdir={tmp_path}",
                 "--export=ALL," + ",".join([f"CIFARLAB_REPO={REPO}", "CIFARLAB_DRY_RUN=1",
                                             "CIFARLAB_PROCESSES_PER_NODE=2"]), str(SBATCH))
    log = tmp_path / f"slurm-cifarlab-multinode-{job}.out"
    _finish(cluster, job, log, timeout=120)
    lines = [line for line in log.read_text().splitlines() if line.startswith("node ")]
    assert sorted(line.split(":")[0] for line in lines) == [f"node {node} rank {rank}"
                                                           for rank, node in enumerate(_nodes(cluster))]
    # 2 CPUs per node over 2 processes: 1 thread each, no loader workers.
    assert all(": 2 CPU(s): " in line and " train.cpu_threads=1 data.num_workers=0 " in line for line in lines)
