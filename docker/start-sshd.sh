#!/usr/bin/env bash
# Run sshd in the foreground so this container can be an MPI worker (see docs/docker.md).
#   start-sshd                 listen on the image's port (2222)
#   SSH_AUTHORIZED_KEYS="ssh-ed25519 AAAA..." start-sshd   also authorize this public key
set -euo pipefail
ssh-keygen -A >/dev/null  # creates only missing host keys
mkdir -p /run/sshd /root/.ssh
chmod 700 /root/.ssh
if [ -n "${SSH_AUTHORIZED_KEYS:-}" ]; then
  printf '%s\n' "$SSH_AUTHORIZED_KEYS" >> /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
fi
exec /usr/sbin/sshd -D -e "$@"
