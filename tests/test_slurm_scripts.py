"""The sbatch scripts (and the other shell scripts) without a cluster: syntax, shellcheck, the multi-node command per
node, and the CPUs each process gets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.integration

SCRIPTS = sorted([*(REPO / "slurm").iterdir(), REPO / "tests" / "slurm_cluster.sh",
                  REPO / "tests" / "slurm_multinode.sh", REPO / ".ci" / "run", *(REPO / "bench").glob("*.sh")])

# A two-node allocation, simulated: `scontrol show hostnames` expands the node list and `srun` runs its
# command once per node with that node's SLURM_NODEID, as SLURM would on each host.
FAKE_SCONTROL = """#!/bin/bash
[[ $1 == show && $2 == hostnames && $3 == 'gpu[07-08]' ]] && printf 'gpu07\\ngpu08\\n'
"""
FAKE_SRUN = """#!/bin/bash
while [[ $1 == --* ]]; do shift; done
for node in 0 1; do SLURM_NODEID=$node SLURMD_NODENAME=gpu0$((7 + node)) "$@"; done
"""


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_parse_and_pass_shellcheck(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def two_node_job(tmp_path: Path) -> dict[str, str]:
    """The environment of a two-node job (gpu07, gpu08) whose scontrol and srun are the fakes above, on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "31337", "SLURM_NNODES": "2",
            "SLURM_JOB_NODELIST": "gpu[07-08]"}


def test_multinode_script_builds_one_command_per_node(tmp_path: Path) -> None:
    env = {**two_node_job(tmp_path), "SLURM_GPUS_ON_NODE": "4", "CIFARLAB_DRY_RUN": "1",
           "CIFARLAB_REPO": str(REPO), "CIFARLAB_CONFIG": "configs/resnet18.yaml"}
    result = subprocess.run(["bash", str(REPO / "slurm" / "train_multinode.sbatch"), "train.epochs=3"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, check=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("node ")]
    assert [line.split(":")[0] for line in lines] == ["node gpu07 rank 0", "node gpu08 rank 1"]
    for rank, line in enumerate(lines):
        words = line.split(": ", 1)[1].split()
        option = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
        assert option["--machine_rank"] == str(rank)
        assert option["--num_machines"] == "2" and option["--num_processes"] == "8"  # 2 nodes x 4 GPUs
        assert option["--main_process_ip"] == "gpu07"  # the first host, on every node
        assert option["--main_process_port"] == str(20000 + 31337 % 20000)
        assert option["--rdzv_backend"] == "c10d"
        assert words[words.index("-m", words.index("--dynamo_backend")) + 1] == "cifarlab.train"
        assert words[-4:] == ["train.output_dir=runs", "train.run_name=slurm-31337", "train.resume=auto",
                              "train.epochs=3"]
    assert f"rendezvous gpu07:{20000 + 31337 % 20000}" in result.stdout


def _shares(line: str) -> tuple[int, int]:
    """(threads, loader workers) per process from a printed command's train.cpu_threads and data.num_workers."""
    words = dict(word.split("=", 1) for word in line.split() if word.startswith(("train.cpu_threads=",
                                                                                 "data.num_workers=")))
    return int(words["train.cpu_threads"]), int(words["data.num_workers"])


@pytest.mark.parametrize(("allocation", "shares"), [
    ({"SLURM_CPUS_PER_TASK": "8"}, (6, 2)),  # one CPU process: a quarter of its CPUs load, the rest compute
    ({"SLURM_CPUS_PER_TASK": "8", "CIFARLAB_PROCESSES": "2"}, (3, 1)),  # 2 gloo processes share the 8
    ({"SLURM_CPUS_PER_TASK": "32", "SLURM_GPUS_ON_NODE": "4"}, (1, 7)),  # 8 per GPU: 7 workers feed each GPU
    ({"SLURM_CPUS_PER_GPU": "6", "SLURM_GPUS_ON_NODE": "2"}, (1, 5)),  # --cpus-per-gpu: 6 x 2 GPUs
    ({"SLURM_CPUS_PER_TASK": "2", "SLURM_GPUS_ON_NODE": "4"}, (1, 0)),  # fewer CPUs than GPUs: 1 thread each
    ({"SLURM_CPUS_PER_TASK": "8", "CIFARLAB_WORKERS": "0"}, (8, 0)),  # the knobs win
])
def test_the_job_cpus_are_shared_out_among_its_processes(allocation: dict[str, str], shares: tuple[int, int],
                                                         tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "CIFARLAB_", "OMP_"))}
    env.update({"SLURM_JOB_ID": "31337", "CIFARLAB_DRY_RUN": "1", **allocation})
    result = subprocess.run(["bash", str(REPO / "slurm" / "train.sbatch"), "train.epochs=3"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, check=True)
    command = next(line for line in result.stdout.splitlines() if line.startswith("command: "))
    assert _shares(command) == shares
    assert f"{shares[0]} thread(s) and {shares[1]} loader worker(s) per process" in result.stdout
    assert command.endswith("train.resume=auto train.epochs=3")  # the user's arguments come last, and win


def test_each_node_shares_out_the_cpus_srun_gave_its_task(tmp_path: Path) -> None:
    env = {**two_node_job(tmp_path), "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_PER_TASK": "64",
           "CIFARLAB_DRY_RUN": "1", "CIFARLAB_REPO": str(REPO)}
    result = subprocess.run(["bash", str(REPO / "slurm" / "train_multinode.sbatch")], env=env, cwd=tmp_path,
                            capture_output=True, text=True, check=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("node ")]
    assert len(lines) == 2 and all(": 64 CPU(s): " in line and _shares(line) == (1, 7) for line in lines)
