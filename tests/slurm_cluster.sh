#!/bin/bash
# A real single-node SLURM cluster on this machine, for the SLURM tests: munged + slurmctld + slurmd on
# 127.0.0.1 with their own config, sockets and state under one directory.
#
# Needs Debian's slurmctld slurmd slurm-client munge (.ci/run installs them).
#   eval "$(tests/slurm_cluster.sh start)"   # exports SLURM_CONF (clients need it) and CIFARLAB_SLURM_DIR
#   tests/slurm_cluster.sh stop              # cancel its jobs, stop the daemons it started (CIFARLAB_SLURM_DIR)
#
# Each cluster keeps everything in its own directory (CIFARLAB_SLURM_DIR, default a new /tmp/cifarlab-slurm.XXXXXX)
# and its own ports (CIFARLAB_SLURM_PORT for the controller, default the first free pair from 17500; slurmd takes
# the next one): two CI runs on one machine each get their own cluster and stop only their own.
# Partitions: `debug` (default, preemptible: user signal, then TERM after GraceTime=10 s, then requeue)
# and `urgent` (higher priority tier: a job there preempts debug jobs).
# Only ever signals the PIDs it started (from its own pid files).
set -euo pipefail

DIR=${CIFARLAB_SLURM_DIR:-}
PORT=${CIFARLAB_SLURM_PORT:-}

paths() {
  CONF=$DIR/slurm.conf
  SOCK=$DIR/munge/munge.socket.2
  export SLURM_CONF=$CONF
}

port_free() { [[ -z $(ss -Hltn "sport = :$1") ]]; }

choose_port() {
  [[ -n $PORT ]] && return 0
  for PORT in $(seq 17500 2 17998); do
    port_free "$PORT" && port_free $(( PORT + 1 )) && return 0
  done
  log "no free port pair in 17500-17999"
  return 1
}

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
SlurmctldPort=${PORT}
SlurmdPort=$(( PORT + 1 ))
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
  if [[ -n $DIR && -f $DIR/slurmctld.pid ]] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    paths
    log "already running"
    echo "export SLURM_CONF=$CONF CIFARLAB_SLURM_DIR=$DIR"
    return
  fi
  if [[ -n $DIR ]]; then
    rm -rf "$DIR"
    mkdir -p "$DIR"
  else
    DIR=$(mktemp -d /tmp/cifarlab-slurm.XXXXXX)
  fi
  chmod 0755 "$DIR"  # munged refuses a socket below a folder others cannot enter
  paths
  choose_port
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
  log "up in $DIR, port $PORT: $(sinfo -h -o '%P %t %c CPUs' | tr '\n' ';')"
  echo "export SLURM_CONF=$CONF CIFARLAB_SLURM_DIR=$DIR"
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
  [[ -n $DIR ]] || { log "CIFARLAB_SLURM_DIR is not set: which cluster? (start prints it)"; return 0; }
  paths
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
