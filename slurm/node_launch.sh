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

COMMAND=(
  "${CIFARLAB_PYTHON:-python}" -m accelerate.commands.launch
  --multi_gpu --num_machines "$NODES" --machine_rank "$MACHINE_RANK" --num_processes $(( NODES * PER_NODE ))
  --main_process_ip "${CIFARLAB_MAIN_HOST:?}" --main_process_port "${CIFARLAB_PORT:?}" --rdzv_backend c10d
  --mixed_precision "${CIFARLAB_MIXED_PRECISION:-no}" --dynamo_backend no
  -m cifarlab.train --config "${CIFARLAB_CONFIG:-configs/default.yaml}"
  "train.output_dir=${CIFARLAB_OUTPUT_DIR:-runs}" "train.run_name=${CIFARLAB_RUN_NAME:?}" train.resume=auto "$@"
)
if [[ -n ${CIFARLAB_DRY_RUN:-} ]]; then
  echo "node ${SLURMD_NODENAME:-$(hostname -s)} rank ${MACHINE_RANK}: ${COMMAND[*]}"
  exit 0
fi
# One line per node in the job's log: which host took which machine rank (the trainer's other ranks print nothing).
echo "cifarlab: node ${SLURMD_NODENAME:-$(hostname -s)} ($(hostname)) is machine rank ${MACHINE_RANK} of ${NODES}," \
  "${PER_NODE} process(es)"
exec "${COMMAND[@]}"
