#!/usr/bin/env bash
# A real one-node Slurm on this host, for the Slurm tests and for trying `sbatch` by hand.
#
#   scripts/slurm_local.sh up       # as root: install what is missing, write the config, start
#                                   # munged, slurmctld and slurmd, wait until the node is idle
#   scripts/slurm_local.sh status   # exit 0 when the Slurm started by `up` is running and its node usable
#   scripts/slurm_local.sh down     # stop exactly the daemons `up` started (their PIDs are recorded)
#
# `make slurm-up` / `make slurm-down` run it; so does the fixture of tests/slurm/. The daemons run
# as root (munged as the munge user) with proctrack/linuxproc and task/none, which need no cgroups.
# State, logs and PID records live in $HVDTRAIN_SLURM_STATE (default /var/lib/hvdtrain-slurm).
set -euo pipefail

STATE=${HVDTRAIN_SLURM_STATE:-/var/lib/hvdtrain-slurm}
CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
STARTED=$STATE/started          # "name pid" of every daemon `up` started, one a line
MARKER="# Written by hvdtrain scripts/slurm_local.sh"
PACKAGES=(slurm-wlm munge)
COMMANDS=(slurmctld slurmd sinfo sbatch munged)
WAIT_SECONDS=${HVDTRAIN_SLURM_WAIT:-60}

TAG=slurm
# shellcheck source=lib/daemons.sh
source "$(dirname "$0")/lib/daemons.sh"

install_missing() {
  local missing=() command
  for command in "${COMMANDS[@]}"; do
    command -v "$command" >/dev/null || missing=("${PACKAGES[@]}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_install "${missing[@]}"
}

write_config() {
  if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace a real cluster's config" \
        "(move it away, or point SLURM_CONF at another path)"
  fi
  local node_line host
  node_line=$(slurmd -C | head -n 1)     # NodeName=<host> CPUs=... as slurmd itself sees this machine
  host=${node_line#NodeName=}; host=${host%% *}
  mkdir -p "$(dirname "$CONF")" "$STATE/ctld" "$STATE/spool"
  cat > "$CONF" <<EOF
$MARKER: a one-node Slurm on this host.
ClusterName=hvdtrain-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# A requeued job waits cred_expire seconds (default 120) before it may start again, and pending jobs
# are looked at every sched_interval (default 60) seconds: short here, so a requeue is seen in seconds.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
$node_line State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  say "wrote $CONF (node: $node_line)"
}

node_name() { sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$CONF" | head -n 1; }

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# record NAME PID: remember that `up` started NAME (replacing an older record of a NAME that died).
record() {
  { grep -v "^$1 " "$STARTED" 2>/dev/null || true; echo "$1 $2"; } > "$STARTED.new"
  mv "$STARTED.new" "$STARTED"
  say "started $1 (pid $2)"
}

recorded_pid() { sed -n "s/^$1 //p" "$STARTED" 2>/dev/null | head -n 1; }

start_munge() {
  if munge_works; then
    if alive "$(recorded_pid munged)" munged; then
      say "munged is already running (pid $(recorded_pid munged), started by this script)"
    else
      say "munged is already running; using it (not started by this script, so down leaves it)"
    fi
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- munged
  wait_for "munged to answer" munge_works 10
  record munged "$(cat /run/munge/munged.pid)"
}

# start_daemon NAME PIDFILE COMMAND...: start a self-daemonizing Slurm daemon and record its PID.
start_daemon() {
  local name=$1 pidfile=$2; shift 2
  if [ -s "$pidfile" ] && alive "$(cat "$pidfile")" "$name"; then
    say "$name is already running (pid $(cat "$pidfile"))"
    return 0
  fi
  local other
  if other=$(running_pid "$name"); then
    die "a $name not started by this script is running (pid $other);" \
        "stop it first, or use the cluster it belongs to"
  fi
  rm -f "$pidfile"
  "$@"
  wait_for "$name to write $pidfile" "test -s $pidfile" 15
  record "$name" "$(cat "$pidfile")"
}

node_state() { sinfo -h -N -n "$(node_name)" -o %T 2>/dev/null | head -n 1; }

node_usable() { case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac; }

# A node left down or drained by an earlier run (e.g. slurmd killed with jobs on it) is put back.
resume_node() {
  case "$(node_state)" in
    down*|drain*|fail*) say "node $(node_name) is $(node_state); resuming it"
                        scontrol update NodeName="$(node_name)" State=RESUME || true ;;
  esac
}

up() {
  need_root up
  local began=$SECONDS
  if status >/dev/null 2>&1; then
    say "already up: node $(node_name) is $(node_state)"
    return 0
  fi
  install_missing
  write_config
  mkdir -p "$STATE"
  start_munge
  start_daemon slurmctld "$STATE/slurmctld.pid" slurmctld -i
  start_daemon slurmd "$STATE/slurmd.pid" slurmd
  wait_for "slurmctld to answer" "scontrol ping >/dev/null 2>&1" 15
  resume_node
  wait_for "node $(node_name) to become idle (sinfo shows: \$(node_state))" node_usable "$WAIT_SECONDS"
  sinfo
  say "up in $((SECONDS - began)) s; stop it with: make slurm-down"
}

status() {
  [ -s "$STARTED" ] || { echo "not started by this script (no $STARTED)"; return 1; }
  local name pid
  while read -r name pid; do
    alive "$pid" "$name" || { echo "$name (pid $pid) is not running"; return 1; }
  done < "$STARTED"
  node_usable || { echo "node $(node_name) is '$(node_state)', not usable"; return 1; }
  echo "up: node $(node_name) is $(node_state)"
}

down() {
  need_root down
  [ -s "$STARTED" ] || { say "nothing to stop (no $STARTED)"; return 0; }
  local name pid
  # Reverse order of starting: slurmd, slurmctld, then munged.
  while read -r name pid; do
    if alive "$pid" "$name"; then
      stop_pid "$name" "$pid"
    else
      say "$name (pid $pid) was not running any more"
    fi
  done < <(tac "$STARTED")
  rm -f "$STARTED"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
