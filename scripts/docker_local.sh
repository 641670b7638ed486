#!/usr/bin/env bash
# A private Docker engine on this host, for the image tests (`make test-docker`) and for building by hand.
#
#   scripts/docker_local.sh up       # as root: install docker.io and debootstrap if missing, start a
#                                    # dockerd of its own (own socket, no default bridge, no iptables)
#   scripts/docker_local.sh status   # exit 0 when the dockerd started by `up` answers
#   scripts/docker_local.sh base     # make the base image from Debian's packages (debootstrap), once
#   scripts/docker_local.sh env      # print DOCKER_HOST and DOCKER_CLI for this engine
#   scripts/docker_local.sh down     # stop exactly the dockerd `up` started; keep its images
#
# Images and the build cache persist in $HVDTRAIN_DOCKER_DATA (default /var/cache/hvdtrain-docker), so
# an unchanged image is not rebuilt; the socket, the exec root and the PID file live in
# $HVDTRAIN_DOCKER_STATE (default /run/hvdtrain-docker) and go with `down`. A dockerd that this script
# did not start is never touched: `up` starts its own next to it.
set -euo pipefail

STATE=${HVDTRAIN_DOCKER_STATE:-/run/hvdtrain-docker}
DATA=${HVDTRAIN_DOCKER_DATA:-/var/cache/hvdtrain-docker}
SOCKET=$STATE/docker.sock
PIDFILE=$STATE/dockerd.pid
WAIT_SECONDS=60
# The local stand-in for python:3.11-slim-bookworm: Debian bookworm's own Python 3.11.
BASE_IMAGE=hvdtrain-base:bookworm-python3.11
BASE_SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python3-dev,ca-certificates
BASE_MIRROR=${HVDTRAIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}

TAG=docker
# shellcheck source=lib/daemons.sh
source "$(dirname "$0")/lib/daemons.sh"

# The client that comes with Debian's dockerd: newer clients build only through the buildx plugin.
cli() {
  if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}

docker_() { DOCKER_HOST="unix://$SOCKET" DOCKER_BUILDKIT=1 "$(cli)" "$@"; }

install_missing() {
  local missing=()
  command -v dockerd >/dev/null && [ -x "$(cli)" ] || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

answers() { docker_ info >/dev/null 2>&1; }

status() {
  [ -s "$PIDFILE" ] && alive "$(cat "$PIDFILE")" dockerd || { echo "not started by this script (no live $PIDFILE)"; return 1; }
  answers || { echo "dockerd (pid $(cat "$PIDFILE")) does not answer on $SOCKET"; return 1; }
  echo "up: dockerd pid $(cat "$PIDFILE") on $SOCKET, data in $DATA"
}

up() {
  need_root up
  if status >/dev/null 2>&1; then say "already up: $(status)"; return 0; fi
  if [ -s "$PIDFILE" ] && alive "$(cat "$PIDFILE")" dockerd; then
    # Ours, but not answering: stop it rather than start a second daemon on the same data root.
    stop_pid dockerd "$(cat "$PIDFILE")" 30
  fi
  install_missing
  mkdir -p "$STATE" "$DATA"
  rm -f "$PIDFILE" "$SOCKET"
  echo '{}' > "$STATE/daemon.json"  # not /etc/docker/daemon.json: a system engine's settings stay its own
  # No default bridge, no iptables rules, no IP forwarding: containers get addresses only on the networks
  # the tests create (inside 198.18.0.0/15), and this host's firewall and routing are left as they are.
  # Its own containerd namespace keeps its containers apart from a system engine's.
  setsid dockerd --config-file "$STATE/daemon.json" --bridge=none --iptables=false --ip-masq=false \
    --ip-forward=false --containerd-namespace hvdtrain --containerd-plugins-namespace hvdtrain-plugins \
    --data-root "$DATA" --exec-root "$STATE/exec" -H "unix://$SOCKET" --pidfile "$PIDFILE" \
    >> "$STATE/dockerd.log" 2>&1 < /dev/null &
  local started=$!
  if ! poll answers "$WAIT_SECONDS"; then
    stop_pid dockerd "$started" 30
    tail -20 "$STATE/dockerd.log" >&2
    die "dockerd did not answer on $SOCKET within $WAIT_SECONDS s; its log: $STATE/dockerd.log"
  fi
  say "started dockerd (pid $(cat "$PIDFILE")); images in $DATA; stop it with: $0 down"
}

down() {
  need_root down
  if [ -s "$PIDFILE" ] && alive "$(cat "$PIDFILE")" dockerd; then
    stop_pid dockerd "$(cat "$PIDFILE")" 30
  else
    say "nothing to stop (no live $PIDFILE)"
  fi
  rm -rf "$STATE"
}

BASE_CHANGES=("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8" 'CMD ["bash"]')

# The key of the base image's inputs: a changed suite, package list, mirror or image setting makes a new one.
base_key() {
  echo "debootstrap --variant=minbase --include=$BASE_PACKAGES $BASE_SUITE $BASE_MIRROR ${BASE_CHANGES[*]}" \
    | sha256sum | cut -c1-16
}

base() {
  answers || die "no engine on $SOCKET: run $0 up first"
  local key have
  key=$(base_key)
  have=$(docker_ image inspect -f '{{ index .Config.Labels "hvdtrain.base.key" }}' "$BASE_IMAGE" 2>/dev/null || true)
  if [ "$have" = "$key" ]; then say "$BASE_IMAGE is cached (key $key)"; return 0; fi
  local root began=$SECONDS
  root=$(mktemp -d "${TMPDIR:-/tmp}/hvdtrain-base.XXXXXX")
  BASE_ROOT=$root
  trap 'rm -rf "${BASE_ROOT:-}"' EXIT
  say "making $BASE_IMAGE with debootstrap ($BASE_SUITE, $BASE_PACKAGES; about a minute)"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$root" "$BASE_MIRROR" \
    > "$root.log" 2>&1 || { tail -20 "$root.log" >&2; die "debootstrap failed; its log: $root.log"; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker_ import --change "LABEL hvdtrain.base.key=$key" \
    --change "${BASE_CHANGES[0]}" --change "${BASE_CHANGES[1]}" - "$BASE_IMAGE" >/dev/null
  rm -f "$root.log"
  say "made $BASE_IMAGE in $((SECONDS - began)) s (key $key)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  base) base ;;
  env) echo "DOCKER_HOST=unix://$SOCKET"; echo "DOCKER_CLI=$(cli)" ;;
  *) echo "usage: $0 up|down|status|base|env" >&2; exit 2 ;;
esac
