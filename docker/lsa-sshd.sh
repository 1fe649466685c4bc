#!/usr/bin/env bash
# Worker side of a multi-node launch: run sshd in the foreground as the container's (non-root) user, on
# $LSA_SSH_PORT, so DeepSpeed's pdsh launcher on the head node can start ranks inside this container.
# Started by `launch/docker-run.sh sshd` on every node of the hostfile, the head node included (DeepSpeed
# reaches every host through ssh, its own too); see docs/docker.md.
#
# A non-root sshd can only log in its own user, which is all a launch needs. Host keys are made fresh per
# container (none are baked into the image). Logins get the container's environment (PATH, CUDA library
# paths, HF_HOME, NCCL_* ...) through SetEnv, since an ssh session does not inherit the image's ENV.
set -euo pipefail
port=${LSA_SSH_PORT:-2222}
sshd=${LSA_SSHD_BIN:-/usr/sbin/sshd}  # overridable for tests/test_docker.py
if ! id -un > /dev/null 2>&1; then
  echo "lsa-sshd: uid $(id -u) has no user in this image, so ssh cannot log in to it; build the image with" \
    "--build-arg USER_UID=$(id -u) --build-arg USER_GID=$(id -g) (docs/docker.md)" >&2
  exit 1
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/lsa-sshd.XXXXXX")
ssh-keygen -q -t ed25519 -N '' -f "$dir/host_ed25519_key"
{
  echo "Port $port"
  echo "HostKey $dir/host_ed25519_key"
  echo "PidFile $dir/sshd.pid"
  echo "AuthorizedKeysFile .ssh/authorized_keys"
  echo "PubkeyAuthentication yes"
  echo "PasswordAuthentication no"
  echo "KbdInteractiveAuthentication no"
  echo "PermitRootLogin no"
  echo "UsePAM no"
  echo "PrintMotd no"
  # Values with quotes, backslashes or spaces cannot be passed safely this way; none of the ones a
  # launch needs have them.
  while IFS='=' read -r -d '' name value; do
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    case "$name" in
      HOME | HOSTNAME | PWD | OLDPWD | SHLVL | _ | TERM | USER | LOGNAME | SHELL) continue ;;
    esac
    case "$value" in
      *[[:space:]\"\\\']* | "") continue ;;
    esac
    echo "SetEnv $name=$value"
  done < <(env -0)
} > "$dir/sshd_config"
echo "lsa-sshd: $(id -un)@$(hostname) listening on port $port" >&2
exec "$sshd" -D -e -f "$dir/sshd_config" "$@"
