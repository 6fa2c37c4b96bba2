#!/bin/bash
# A real single-node SLURM cluster on this machine, for the SLURM tests: munged + slurmctld + slurmd on
# 127.0.0.1 with their own config, sockets and state under one directory.
#
# Needs Debian's slurmctld slurmd slurm-client munge (.ci/run installs them).
#   tests/slurm_cluster.sh start      # prints `export SLURM_CONF=...`; clients need it
#   tests/slurm_cluster.sh stop       # cancel all jobs, stop the daemons it started
#
# Partitions: `debug` (default, preemptible: user signal, then TERM after GraceTime=10 s, then requeue)
# and `urgent` (higher priority tier: a job there preempts debug jobs).
# Only ever signals the PIDs it started (from its own pid files).
set -euo pipefail

DIR=${CIFARLAB_SLURM_DIR:-/tmp/cifarlab-slurm}
CONF=$DIR/slurm.conf
SOCK=$DIR/munge/munge.socket.2
export SLURM_CONF=$CONF

log() { echo "slurm_cluster: $*" >&2; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "timed out waiting for $what"
  return 1
}

write_config() {
  local host node_line memory
  host=$(hostname -s)
  # CPUs/Boards/Sockets/Cores/Threads as slurmd sees them; RealMemory a little under the total.
  node_line=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //; s/ RealMemory=[0-9]+//')
  memory=$(( $(slurmd -C | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p') * 9 / 10 ))
  cat >"$CONF" <<EOF
ClusterName=cifarlab
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${SOCK}
StateSaveLocation=${DIR}/ctld
SlurmdSpoolDir=${DIR}/d
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd.pid
SlurmctldLogFile=${DIR}/slurmctld.log
SlurmdLogFile=${DIR}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=${host} NodeAddr=127.0.0.1 ${node_line} RealMemory=${memory}
PartitionName=debug  Nodes=${host} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=10
PartitionName=urgent Nodes=${host} Default=NO  MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
}

start() {
  if [[ -f $DIR/slurmctld.pid ]] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    log "already running"
    echo "export SLURM_CONF=$CONF"
    return
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR/munge" "$DIR/ctld" "$DIR/d"
  chmod 0755 "$DIR/munge"
  mungekey -c -k "$DIR/munge/munge.key"
  chmod 0600 "$DIR/munge/munge.key"
  # 9>&- : daemons must not inherit a caller's lock or pipe descriptor (the caller would block on it).
  munged --socket="$SOCK" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munged.pid" \
    --log-file="$DIR/munged.log" --seed-file="$DIR/munge/munge.seed" 9>&- </dev/null
  wait_for 10 munged bash -c "munge -S '$SOCK' -n | unmunge -S '$SOCK'"
  write_config
  slurmctld -c -f "$CONF" 9>&- </dev/null >/dev/null 2>&1
  wait_for 20 slurmctld bash -c "scontrol ping | grep -q UP"
  slurmd -c -f "$CONF" 9>&- </dev/null >/dev/null 2>&1
  if ! wait_for 10 "an idle node" bash -c "sinfo -h -o %t | grep -q idle"; then
    scontrol update nodename="$(hostname -s)" state=resume
    wait_for 10 "an idle node" bash -c "sinfo -h -o %t | grep -q idle"
  fi
  log "up: $(sinfo -h -o '%P %t %c CPUs' | tr '\n' ';')"
  echo "export SLURM_CONF=$CONF"
}

stop_pid() {
  local file=$1 pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

stop() {
  [[ -f $CONF ]] || { log "not running"; return 0; }
  scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
  # shellcheck disable=SC2016  # expanded by the inner bash
  wait_for 60 "jobs to end" bash -c '[[ -z $(squeue -h -t running,completing,configuring -o %i) ]]' || true
  stop_pid "$DIR/slurmd.pid"
  stop_pid "$DIR/slurmctld.pid"
  stop_pid "$DIR/munged.pid"
  log "stopped"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
