#!/usr/bin/env bash
# Run `lsa ARGS...` in the lsa-ds docker image (docker/Dockerfile) with the flags that are easy to forget
# and expensive to miss: GPUs, host IPC and a large /dev/shm (NCCL, data loader workers), unlimited
# locked memory and a 64 MB stack (NCCL/InfiniBand, DeepSpeed), host networking (NCCL across nodes), your
# uid (files in runs/ belong to you), and volumes for data, runs and caches. See docs/docker.md (also for
# the buildah and podman equivalents).
#
#   launch/docker-run.sh train recipes/my-recipe.yaml --nproc 8
#   LSA_HOSTFILE=./hostfile launch/docker-run.sh train recipes/my.yaml --hostfile /workspace/hostfile --num_nodes 2 --nproc 8
#   launch/docker-run.sh sshd           # multi-node: on every node, the head included (detached sshd container)
#   LSA_DRY_RUN=1 launch/docker-run.sh eval runs/my-run    # print the docker command, run nothing
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/docker-run.sh LSA_ARGS...     run `lsa LSA_ARGS...` in the container
       launch/docker-run.sh sshd            start this node's sshd worker container (multi-node)

Environment (defaults in brackets):
  LSA_IMAGE       image to run [lsa-ds:latest]
  LSA_DATA        host folder mounted at /workspace/data [./data]
  LSA_RUNS        host folder mounted at /workspace/runs [./runs]
  LSA_CACHE       host folder mounted at /workspace/.cache: token cache, DeepSpeed's JIT-built ops
                  [~/.cache/lsa-ds-docker]
  LSA_HF_CACHE    host HF cache mounted at /workspace/.cache/huggingface (HF_HOME in the container)
                  [$HF_HOME or ~/.cache/huggingface]
  LSA_RECIPES     host recipes folder mounted read-only at /workspace/recipes, if it exists
                  [./recipes; otherwise the image's own recipes]
  LSA_GPUS        value of --gpus [all]; a subset is e.g. '"device=0,1"'; `none` leaves --gpus out (the
                  CPU image of scripts/build-container.sh, or a machine without GPUs)
  LSA_SHM_SIZE    --shm-size [64g] (applies when LSA_IPC is not host)
  LSA_IPC         --ipc [host]
  LSA_NETWORK     --network [host]
  LSA_USER        --user [your uid:gid; the image should be built with the same uid, docs/docker.md]
  LSA_HOSTFILE    multi-node: host hostfile, mounted read-only at /workspace/hostfile, and ~/.ssh is
                  mounted read-only for the launcher's ssh; pass `--hostfile /workspace/hostfile` to lsa
  LSA_SSH_DIR     ssh folder to mount for multi-node [~/.ssh]
  LSA_SSHD_NAME   container name of the sshd worker [lsa-sshd]
  LSA_DOCKER_ARGS extra `docker run` arguments (split on spaces)
  LSA_DRY_RUN=1   print the docker command instead of running it
HF_TOKEN and NCCL_* variables set here are passed into the container (by name: values are not printed).
EOF
}

if [ "$#" -eq 0 ]; then
  usage >&2
  exit 2
fi
case "$1" in
  -h | --help)
    usage
    exit 0
    ;;
esac

image=${LSA_IMAGE:-lsa-ds:latest}
data=${LSA_DATA:-$PWD/data}
runs=${LSA_RUNS:-$PWD/runs}
cache=${LSA_CACHE:-$HOME/.cache/lsa-ds-docker}
hf_cache=${LSA_HF_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}}
recipes=${LSA_RECIPES:-$PWD/recipes}
hostfile=${LSA_HOSTFILE:-}
ssh_dir=${LSA_SSH_DIR:-$HOME/.ssh}
user=${LSA_USER:-$(id -u):$(id -g)}
dry_run=${LSA_DRY_RUN:-0}
# Where the image's user lives (docker/Dockerfile, USER_NAME=lsa): ~/.ssh is mounted below it.
container_home=/home/lsa

mode=lsa
if [ "$1" = "sshd" ]; then
  mode=sshd
  shift
fi

args=(run --rm --init)
if [ "${LSA_GPUS:-all}" != none ]; then
  args+=(--gpus "${LSA_GPUS:-all}")
fi
args+=(--ipc="${LSA_IPC:-host}"
  --shm-size "${LSA_SHM_SIZE:-64g}"
  --ulimit memlock=-1 --ulimit stack=67108864
  --network "${LSA_NETWORK:-host}"
  --user "$user"
  -e "HOME=$container_home"
  -v "$data:/workspace/data"
  -v "$runs:/workspace/runs"
  -v "$cache:/workspace/.cache"
  -v "$hf_cache:/workspace/.cache/huggingface")
mkdirs=("$data" "$runs" "$cache" "$hf_cache")

if [ -d "$recipes" ]; then
  args+=(-v "$recipes:/workspace/recipes:ro")
fi

# Multi-node: DeepSpeed's launcher reads the hostfile and ssh-es (pdsh) into each host's sshd container.
if [ -n "$hostfile" ] || [ "$mode" = sshd ]; then
  if [ -n "$hostfile" ]; then
    case "$hostfile" in
      /*) ;;
      *) hostfile=$PWD/$hostfile ;;
    esac
    args+=(-v "$hostfile:/workspace/hostfile:ro")
  fi
  args+=(-v "$ssh_dir:$container_home/.ssh:ro")
fi

# Secrets and NCCL settings by name only: docker copies the values from this environment.
while IFS= read -r name; do
  args+=(-e "$name")
done < <(compgen -e | grep -E '^(HF_TOKEN|NCCL_[A-Z0-9_]+)$' || true)

if [ -n "${LSA_DOCKER_ARGS:-}" ]; then
  read -r -a extra <<<"$LSA_DOCKER_ARGS"
  args+=("${extra[@]}")
fi

if [ "$mode" = sshd ]; then
  # Detached: the head node's `lsa train --hostfile ...` starts ranks in it over ssh.
  args+=(-d --name "${LSA_SSHD_NAME:-lsa-sshd}" --entrypoint /usr/local/bin/lsa-entrypoint "$image" lsa-sshd "$@")
else
  if [ -t 0 ] && [ -t 1 ]; then
    args+=(-it)
  fi
  args+=("$image" "$@")
fi

if [ "$dry_run" = 1 ]; then
  printf '%q ' docker "${args[@]}"
  printf '\n'
  exit 0
fi

# Create the host folders first, or docker creates them owned by root.
mkdir -p "${mkdirs[@]}"
exec docker "${args[@]}"
