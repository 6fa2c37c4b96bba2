#!/bin/bash
# One node's part of slurm/train_multinode.sbatch, started by srun as one task per node. Everything
# that differs between nodes is read here, inside the task: the batch script itself runs on the first
# node only, so a rank taken there would make every node claim rank 0.
# CIFARLAB_DRY_RUN=1 prints the command instead of running it (the tests check it that way).
set -euo pipefail

NODES=${SLURM_NNODES:?not inside a SLURM job step}
MACHINE_RANK=${SLURM_NODEID:?not inside a SLURM job step}
GPUS=${CIFARLAB_GPUS:-${SLURM_GPUS_ON_NODE:-0}}
PER_NODE=${CIFARLAB_PROCESSES_PER_NODE:-$(( GPUS > 0 ? GPUS : 1 ))}
# This node's CPUs shared out among its processes, as in slurm/train.sbatch: the CPUs srun gave the task
# (--cpus-per-task), else --cpus-per-gpu x GPUs, else the node's share; loader workers take all but one per
# process on a GPU, a quarter on a CPU; the rest are threads.
CPUS=${SLURM_CPUS_PER_TASK:-$(( ${SLURM_CPUS_PER_GPU:-0} * GPUS ))}
(( CPUS > 0 )) || CPUS=${SLURM_CPUS_ON_NODE:-1}
PER_PROCESS=$(( CPUS / PER_NODE > 0 ? CPUS / PER_NODE : 1 ))
WORKERS=${CIFARLAB_WORKERS:-$(( GPUS > 0 ? PER_PROCESS - 1 : PER_PROCESS / 4 ))}
THREADS=${CIFARLAB_THREADS:-$(( PER_PROCESS - WORKERS > 0 ? PER_PROCESS - WORKERS : 1 ))}
export OMP_NUM_THREADS=$THREADS

COMMAND=(
  "${CIFARLAB_PYTHON:-python}" -m accelerate.commands.launch
  --multi_gpu --num_machines "$NODES" --machine_rank "$MACHINE_RANK" --num_processes $(( NODES * PER_NODE ))
  --main_process_ip "${CIFARLAB_MAIN_HOST:?}" --main_process_port "${CIFARLAB_PORT:?}" --rdzv_backend c10d
  --mixed_precision "${CIFARLAB_MIXED_PRECISION:-no}" --dynamo_backend no
  -m cifarlab.train --config "${CIFARLAB_CONFIG:-configs/default.yaml}"
  "train.cpu_threads=${THREADS}" "data.num_workers=${WORKERS}" "train.output_dir=${CIFARLAB_OUTPUT_DIR:-runs}" "train.run_name=${CIFARLAB_RUN_NAME:?}" train.resume=auto "$@"
)
if [[ -n ${CIFARLAB_DRY_RUN:-} ]]; then
  echo "node ${SLURMD_NODENAME:-$(hostname -s)} rank ${MACHINE_RANK}: ${CPUS} CPU(s): ${COMMAND[*]}"
  exit 0
fi
# One line per node in the job's log: which host took which machine rank (the trainer's other ranks print nothing).
echo "cifarlab: node ${SLURMD_NODENAME:-$(hostname -s)} ($(hostname)) is machine rank ${MACHINE_RANK} of ${NODES}," \
  "${PER_NODE} process(es), ${CPUS} CPU(s): ${THREADS} thread(s) and ${WORKERS} loader worker(s) per process"
exec "${COMMAND[@]}"
