#!/bin/bash
# A real two-node SLURM cluster on this one machine, for the multi-node tests: each node is a slurmd in a
# network namespace and UTS namespace of its own (its own hostname and address on a private bridge); the
# controller (slurmctld) and munged run on the host side, on the bridge's address. Needs root, `ip netns`
# (iproute2), `unshare` (util-linux) and Debian's slurmctld slurmd slurm-client munge.
#
#   eval "$(tests/slurm_multinode.sh start)"   # prints export lines: the cluster's slurm.conf and its state dir
#   SLURM_CONF=$CIFARLAB_MULTINODE_SLURM_CONF sbatch --nodes=2 ...
#   tests/slurm_multinode.sh stop              # cancel its jobs, stop its daemons, remove namespaces and bridge
#
# Instance N (the first free one in 1..200, claimed by creating the bridge `cmnN-br`, which fails if another
# run holds N) owns:
#   addresses 10.213.N.0/24: the host side (slurmctld) 10.213.N.1 on the bridge, node i 10.213.N.(11+i);
#   network namespaces and hostnames cmnN-node0, cmnN-node1 (the names resolve inside the nodes through
#     a hosts file of their own, and nothing else: a resolv.conf without name server; both are bound over
#     /etc's in each slurmd's mount namespace; the namespaces have no route off the bridge);
#   ports: slurmctld 17000+2N on the host side, slurmd 17001+2N inside each namespace;
#   state: $CIFARLAB_MULTINODE_DIR (default: a new /tmp/cifarlab-slurm-mn.XXXXXX), holding slurm.conf, the
#     munge key and socket, the controller's state, each node's spool, pid files and logs (munged wants
#     every folder above its socket open to all: not under pytest's 0700 temp folders).
# It never touches SLURM's default ports (6817-6819) or the single-node cluster of tests/slurm_cluster.sh;
# `stop` only signals the PIDs in its own pid files and processes inside its own namespaces.
#
# Partitions as in tests/slurm_cluster.sh: `debug` (default, preemptible: user signal, TERM after
# GraceTime=10 s, requeue) and `urgent` (higher priority tier: a job there preempts debug jobs).
set -euo pipefail

NODES=2
PREFIX=cmn
SUBNET=10.213

log() { echo "slurm_multinode: $*" >&2; }
die() { log "$*"; exit 1; }

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

# The names and numbers of instance $ID (set by claim or read back from $DIR/instance).
names() {
  BRIDGE=${PREFIX}${ID}-br
  CTLD_ADDR=${SUBNET}.${ID}.1
  CTLD_PORT=$(( 17000 + 2 * ID ))
  SLURMD_PORT=$(( 17001 + 2 * ID ))
  CONF=$DIR/slurm.conf
  SOCK=$DIR/munge/munge.socket.2
}
node_name() { echo "${PREFIX}${ID}-node$1"; }
node_addr() { echo "${SUBNET}.${ID}.$(( 11 + $1 ))"; }

preflight() {
  local command
  [[ $(id -u) == 0 ]] || die "needs root (network namespaces, a bridge, SLURM daemons as SlurmUser=root)"
  for command in ip unshare nsenter slurmctld slurmd munged mungekey sbatch scontrol ss; do
    command -v "$command" >/dev/null || die "$command not found (apt-get install iproute2 util-linux slurmctld slurmd slurm-client munge)"
  done
  ip netns list >/dev/null 2>&1 || die "ip netns does not work here: $(ip netns list 2>&1 | head -n 1)"
}

port_free() { [[ -z $(ss -Hltn "sport = :$1") ]]; }

# Take the first free instance number: its bridge does not exist yet (creating it is the atomic claim),
# nothing on this machine has an address in its subnet, and its controller port is free.
claim() {
  for ID in $(seq 1 200); do
    names
    ip -o addr show | grep -q " ${SUBNET}\.${ID}\." && continue
    port_free "$CTLD_PORT" || continue
    ip link add "$BRIDGE" type bridge 2>/dev/null || continue
    echo "$ID" >"$DIR/instance"
    return 0
  done
  die "no free instance: bridges ${PREFIX}1-br .. ${PREFIX}200-br all taken"
}

network() {
  local i j ns
  ip addr add "${CTLD_ADDR}/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for (( i = 0; i < NODES; i++ )); do
    ns=$(node_name "$i")
    mkdir -p "$DIR/$ns"
    {
      echo "127.0.0.1 localhost"
      echo "${CTLD_ADDR} ${PREFIX}${ID}-ctld"
      for (( j = 0; j < NODES; j++ )); do echo "$(node_addr "$j") $(node_name "$j")"; done
    } >"$DIR/$ns/hosts"
    # No name server: a lookup the hosts file cannot answer fails at once inside the namespace.
    echo "nameserver 127.0.0.1" >"$DIR/$ns/resolv.conf"
    ip netns add "$ns"
    ip link add "${PREFIX}${ID}-v$i" type veth peer name "${PREFIX}${ID}-p$i"
    ip link set "${PREFIX}${ID}-v$i" master "$BRIDGE" up
    ip link set "${PREFIX}${ID}-p$i" netns "$ns"
    ip -n "$ns" link set "${PREFIX}${ID}-p$i" name eth0
    ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
}

write_config() {
  local node_line memory i nodes
  # CPUs/Boards/Sockets/Cores/Threads as slurmd sees them (every node sees this machine); RealMemory a
  # little under the total (not enforced: CR_Core).
  node_line=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //; s/ RealMemory=[0-9]+//; s/ UpTime=.*//')
  memory=$(( $(slurmd -C | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p') * 9 / 10 ))
  nodes="$(node_name 0),$(node_name 1)"
  {
    cat <<EOF
ClusterName=cifarlab-mn${ID}
SlurmctldHost=$(hostname -s)(${CTLD_ADDR})
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${SOCK}
StateSaveLocation=${DIR}/ctld
SlurmdSpoolDir=${DIR}/%n/spool
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/%n/slurmd.pid
SlurmctldLogFile=${DIR}/slurmctld.log
SlurmdLogFile=${DIR}/%n/slurmd.log
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
EOF
    for (( i = 0; i < NODES; i++ )); do
      echo "NodeName=$(node_name "$i") NodeAddr=$(node_addr "$i") ${node_line} RealMemory=${memory}"
    done
    echo "PartitionName=debug  Nodes=${nodes} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=10"
    echo "PartitionName=urgent Nodes=${nodes} Default=NO  MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF"
  } >"$CONF"
}

CREATED=
# EXIT trap while starting: on a failure, stop what was started and remove a state directory made here.
start_failed() {
  local status=$?
  (( status == 0 )) && return
  log "start failed; cleaning up"
  stop >/dev/null 2>&1 || true
  if [[ -n $CREATED ]]; then rm -rf "$DIR"; fi
}

exports() {
  echo "export CIFARLAB_MULTINODE_DIR=$DIR"
  echo "export CIFARLAB_MULTINODE_SLURM_CONF=$CONF"
}

start() {
  local i node
  preflight
  if [[ -n ${CIFARLAB_MULTINODE_DIR:-} ]]; then
    DIR=$CIFARLAB_MULTINODE_DIR
    if [[ -f $DIR/instance && -f $DIR/slurmctld.pid ]] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
      ID=$(cat "$DIR/instance")
      names
      log "already running"
      exports
      return
    fi
    [[ -f $DIR/instance ]] && stop
    if [[ -d $DIR && -n $(ls -A "$DIR") && ! -f $DIR/slurm.conf ]]; then
      die "$DIR is not empty and holds no slurm.conf: not a cluster directory, refusing to clear it"
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"
  else
    DIR=$(mktemp -d /tmp/cifarlab-slurm-mn.XXXXXX)
    CREATED=1
  fi
  # From here on a failure undoes what was set up.
  trap start_failed EXIT
  claim
  network
  mkdir -p "$DIR/munge" "$DIR/ctld"
  chmod 0755 "$DIR" "$DIR/munge"
  mungekey -c -k "$DIR/munge/munge.key"
  chmod 0600 "$DIR/munge/munge.key"
  # 9>&- : daemons must not inherit a caller's lock or pipe descriptor (the caller would block on it).
  munged --socket="$SOCK" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munged.pid" \
    --log-file="$DIR/munged.log" --seed-file="$DIR/munge/munge.seed" 9>&- </dev/null
  wait_for 10 munged bash -c "munge -S '$SOCK' -n | unmunge -S '$SOCK'"
  write_config
  export SLURM_CONF=$CONF
  slurmctld -c -f "$CONF" 9>&- </dev/null >/dev/null 2>&1
  wait_for 20 slurmctld bash -c "scontrol ping | grep -q UP"
  for (( i = 0; i < NODES; i++ )); do
    node=$(node_name "$i")
    mkdir -p "$DIR/$node/spool"
    # In the node's network namespace, under its own hostname (a UTS namespace), with its own /etc/hosts
    # and /etc/resolv.conf (bound over the host's in a private mount namespace; not `ip netns exec`, whose
    # fresh /sys hides the cgroup mounts slurmd needs). slurmd finds its NodeName from the hostname and
    # daemonizes in there; job steps inherit all three namespaces.
    # shellcheck disable=SC2016  # expanded by the inner sh
    nsenter --net="/run/netns/$node" unshare --uts --mount --propagation private sh -c \
      'hostname "$1" && mount --bind "$2/hosts" /etc/hosts && mount --bind "$2/resolv.conf" /etc/resolv.conf &&
       exec slurmd -c -f "$3"' sh "$node" "$DIR/$node" "$CONF" 9>&- </dev/null >/dev/null 2>&1
  done
  if ! wait_for 15 "$NODES idle nodes" bash -c "[[ \$(sinfo -h -N -p debug -o %t | grep -c idle) == $NODES ]]"; then
    scontrol update nodename="$(node_name 0),$(node_name 1)" state=resume || true
    wait_for 15 "$NODES idle nodes" bash -c "[[ \$(sinfo -h -N -p debug -o %t | grep -c idle) == $NODES ]]"
  fi
  trap - EXIT
  log "up: instance $ID, controller ${CTLD_ADDR}:${CTLD_PORT}, nodes $(sinfo -h -N -p debug -o '%N=%t' | tr '\n' ' ')"
  exports
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
  local i node pids
  DIR=${CIFARLAB_MULTINODE_DIR:-${DIR:-}}
  [[ -n $DIR ]] || die "stop: set CIFARLAB_MULTINODE_DIR (start prints it)"
  [[ -f $DIR/instance ]] || { log "not running ($DIR has no instance)"; return 0; }
  ID=$(cat "$DIR/instance")
  names
  export SLURM_CONF=$CONF
  if [[ -f $DIR/slurmctld.pid ]] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    scancel --full --quiet 2>/dev/null || true
    # shellcheck disable=SC2016  # expanded by the inner bash
    wait_for 60 "jobs to end" bash -c '[[ -z $(squeue -h -t running,completing,configuring -o %i) ]]' || true
  fi
  for (( i = 0; i < NODES; i++ )); do
    stop_pid "$DIR/$(node_name "$i")/slurmd.pid"
  done
  stop_pid "$DIR/slurmctld.pid"
  stop_pid "$DIR/munged.pid"
  for (( i = 0; i < NODES; i++ )); do
    node=$(node_name "$i")
    if ip netns list | grep -qw "$node"; then
      # Whatever is left inside this cluster's own namespaces (a step that outlived its slurmd) is ours.
      pids=$(ip netns pids "$node" || true)
      if [[ -n $pids ]]; then
        # shellcheck disable=SC2086  # one PID per word
        kill -KILL $pids 2>/dev/null || true
      fi
      ip netns del "$node"
    fi
    ip link del "${PREFIX}${ID}-v$i" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -f "$DIR/instance"
  log "stopped instance $ID (state and logs kept in $DIR)"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
