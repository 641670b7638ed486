# Shared by the scripts that start daemons for the tests (slurm_local.sh, docker_local.sh): source it
# after setting TAG (the log prefix) and STATE (where `up` records what it started).

say() { echo "[$TAG] $*"; }
die() { echo "[$TAG] error: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 $1): it installs packages and starts system daemons"
}

# True when process $1 runs and its command name is $2 (a recycled PID does not count). A process
# counts until its last thread has exited: a daemon's main thread may end before its others do.
alive() {
  [ "$(cat "/proc/${1:-none}/comm" 2>/dev/null)" = "$2" ] || return 1
  local task stat
  for task in /proc/"$1"/task/*; do
    stat=$(cat "$task/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    [ "${stat%% *}" = Z ] || return 0
  done
  return 1
}

# The PID of a running process named $1 (zombies aside), if any.
running_pid() {
  local pid
  for pid in $(pgrep -x "$1"); do
    if alive "$pid" "$1"; then echo "$pid"; return 0; fi
  done
  return 1
}

# apt_install PACKAGE...: install with apt-get, keeping the packages' own init scripts from starting
# daemons the calling script would not know about.
apt_install() {
  say "installing $* (apt-get, about a minute)"
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$guard" && chmod 755 "$guard"
  fi
  local status=0
  { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
      || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; }; } \
    || status=$?
  [ -z "$guard" ] || rm -f "$guard"
  [ "$status" -eq 0 ] || die "apt-get install $* failed (exit $status); see its output above"
}

# poll COMMAND SECONDS: run COMMAND every 0.5 s until it succeeds; false once SECONDS have passed.
poll() {
  local check=$1 deadline=$((SECONDS + $2))
  until eval "$check"; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

# wait_for WHAT COMMAND SECONDS: poll COMMAND, and fail naming WHAT if it never succeeds.
wait_for() {
  poll "$2" "$3" || die "gave up waiting for $1 after $3 s; logs: $STATE/*.log"
}

# stop_pid NAME PID [SECONDS]: SIGTERM, and SIGKILL if it is still there SECONDS (default 20) later.
stop_pid() {
  local name=$1 pid=$2 deadline=$((SECONDS + ${3:-20}))
  kill -TERM "$pid" 2>/dev/null || true
  while alive "$pid" "$name" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  if alive "$pid" "$name"; then
    kill -KILL "$pid" 2>/dev/null || true
    say "killed $name (pid $pid): it ignored SIGTERM for ${3:-20} s"
  else
    say "stopped $name (pid $pid)"
  fi
}
