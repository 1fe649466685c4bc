#!/usr/bin/env bash
# Build the CPU variant of the lsa-ds image from docker/Dockerfile with buildah, and run lsa in it as the
# image's non-root user. No docker engine and no container registry are needed (docs/docker.md):
#
#   1. wheelhouse: torch and every pinned dependency as wheels, built here (deepspeed is an sdist on PyPI);
#      the image installs from it with PIP_NO_INDEX=1 (pip never sees PyPI's multi-GB CUDA torch).
#   2. base image: Debian bookworm made with debootstrap (Python 3.11 as `python`, pip, build-essential,
#      python3-dev), imported into buildah, with CPU torch installed: what an NGC image is to the Dockerfile.
#   3. `buildah bud --isolation chroot --layers` of docker/Dockerfile with BASE_IMAGE=<the base>.
#   4. in the image, as user lsa, with host folders mounted like launch/docker-run.sh mounts them:
#      `lsa --help`; `lsa train tiny-cpu` for a few steps on 2 ranks; `lsa export`; `lsa eval` of the export.
#
# The base root filesystem and the wheelhouse are cached under .cache/container/ (ignored by git), keyed by a
# hash of what makes them; the Dockerfile's layers are cached by buildah. A second run rebuilds nothing
# unless an input changed. Prints the build time, the image size and the in-image run's final loss; exits
# non-zero on any failure; removes every working container it created. Needs root (debootstrap, buildah).
#
#   bash scripts/build-container.sh              # build (cached) and run the checks
#   bash scripts/build-container.sh --preflight  # only say whether this machine can build (exit 0, else 3)
#
# Environment (defaults in brackets):
#   LSA_CONTAINER_CACHE   cache folder [.cache/container]
#   LSA_CONTAINER_IMAGE   tag of the built image [localhost/lsa-ds:cpu]
#   LSA_CONTAINER_TORCH   torch requirement of the base [torch==2.13.0]; pip must find a CPU build of it
#                         (here: /opt/wheels; elsewhere e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)
#   LSA_DEBIAN_MIRROR     [http://deb.debian.org/debian]; LSA_DEBIAN_SECURITY [http://deb.debian.org/debian-security]
#   LSA_CONTAINER_FRESH=1 drop the in-image run's caches first (DeepSpeed's JIT-built op, the token cache)
#   LSA_VENV              host environment whose pip builds the wheelhouse [.venv; else python3]
set -euo pipefail
cd "$(dirname "$0")/.."
export BUILDAH_ISOLATION=chroot LC_ALL=C.UTF-8

CACHE=${LSA_CONTAINER_CACHE:-.cache/container}
IMAGE=${LSA_CONTAINER_IMAGE:-localhost/lsa-ds:cpu}
TORCH_SPEC=${LSA_CONTAINER_TORCH:-torch==2.13.0}
MIRROR=${LSA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${LSA_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
SUITE=bookworm # Python 3.11, the same minor version as the host's and the wheelhouse's cp311 wheels
BASE_REPO=localhost/lsa-ds-cpu-base
# python-is-python3: the Dockerfile calls `python`, as on NGC. build-essential + python3-dev: DeepSpeed
# JIT-compiles its CPU shared-memory comm op with g++ against Python.h at the first launch.
PACKAGES=python3,python3-pip,python3-dev,python3-venv,python-is-python3,build-essential,ca-certificates
PY=${LSA_VENV:-.venv}/bin/python
[ -x "$PY" ] || PY=python3
RUN_NAME=container-check

log() { printf '[build-container %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
  log "FAILED: $*" >&2
  exit 1
}

# --- preflight: root, the two tools, and a container buildah can create -------------------------------
preflight() {
  local tool ctr
  for tool in buildah debootstrap; do
    command -v "$tool" > /dev/null || {
      echo "$tool is not installed (Debian: apt-get install -y buildah debootstrap)"
      return 3
    }
  done
  if [ "$(id -u)" != 0 ]; then
    echo "needs root: debootstrap and buildah's chroot isolation run as root here (uid $(id -u))"
    return 3
  fi
  if ! ctr=$(buildah from scratch 2>&1); then
    echo "buildah cannot create a container: ${ctr//$'\n'/ }"
    return 3
  fi
  buildah rm "$ctr" > /dev/null
  echo "ok: buildah $(buildah --version | awk '{print $3}'), debootstrap, root"
}

if [ "${1:-}" = --preflight ]; then
  preflight
  exit
fi
if [ "$#" -gt 0 ]; then
  echo "usage: scripts/build-container.sh [--preflight]" >&2
  exit 2
fi
reason=$(preflight) || {
  echo "cannot build here: $reason" >&2
  exit 3
}

# Working containers are removed on every exit, failed or not.
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do
    [ -z "$c" ] || buildah rm "$c" > /dev/null 2>&1 || true
  done
}
trap cleanup EXIT

# A folder that debootstrap may have left with /proc or /sys mounted inside: unmount, then delete on this
# file system only.
remove_tree() {
  local dir mnt
  [ -e "$1" ] || return 0
  dir=$(realpath "$1")
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r | while read -r mnt; do
    umount -l "$mnt" || true
  done
  rm -rf --one-file-system "$dir"
}

key_of() { sha256sum | cut -c1-16; }
started=$SECONDS
mkdir -p "$CACHE"
CACHE=$(realpath "$CACHE")

# --- 1. wheelhouse -------------------------------------------------------------------------------------
# pip warns once per package about index folders that lack it (this host's pip.conf); nothing else is dropped.
quiet_pip() { grep -v 'is ignored: it is neither a file nor a directory' || true; }

make_wheelhouse() { # $1: the folder to create
  local tmp=$1.tmp
  remove_tree "$tmp"
  mkdir -p "$tmp"
  "$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
    > "$tmp/requirements.txt"
  # deepspeed is an sdist on PyPI: build its (pure Python, ops JIT-built at run time) wheel here first,
  # then collect wheels of everything else; --find-links makes pip take the wheel instead of the sdist.
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$tmp" \
    -c requirements/constraints.txt deepspeed 2> >(quiet_pip >&2)
  "$PY" -m pip wheel -q --disable-pip-version-check -w "$tmp" --find-links "$tmp" \
    -c requirements/constraints.txt "$TORCH_SPEC" -r "$tmp/requirements.txt" setuptools 2> >(quiet_pip >&2)
  rm "$tmp/requirements.txt"
  if compgen -G "$tmp/nvidia_*" > /dev/null; then
    die "pip found a CUDA build of $TORCH_SPEC (nvidia-* wheels in $tmp); point pip at a CPU build (LSA_CONTAINER_TORCH, PIP_EXTRA_INDEX_URL)"
  fi
  mv "$tmp" "$1"
}

wheel_key=$({
  declare -f make_wheelhouse
  echo "$TORCH_SPEC"
  cat requirements/constraints.txt
  "$PY" -c 'import sys, tomllib; print(sys.version_info[:2], tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"])'
} | key_of)
WHEELHOUSE=$CACHE/wheelhouse-$wheel_key
if [ -d "$WHEELHOUSE" ]; then
  log "wheelhouse: reused $WHEELHOUSE"
else
  t=$SECONDS
  log "wheelhouse: building $WHEELHOUSE (pip wheel with $PY)"
  make_wheelhouse "$WHEELHOUSE"
  for old in "$CACHE"/wheelhouse-*; do
    [ "$old" = "$WHEELHOUSE" ] || remove_tree "$old"
  done
  log "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1) in $((SECONDS - t)) s"
fi
torch_wheel=$(cd "$WHEELHOUSE" && ls torch-*.whl)

# --- 2. base image: debootstrap, import, CPU torch -----------------------------------------------------
make_rootfs_tar() { # $1: the tar file to create
  local root=$CACHE/rootfs.tmp
  remove_tree "$root"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 ||
    die "debootstrap failed, see $CACHE/debootstrap.log"
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
    "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SECURITY_MIRROR" "$SUITE" > "$root/etc/apt/sources.list"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" --numeric-owner -cf "$1.tmp" .
  mv "$1.tmp" "$1"
  remove_tree "$root"
}

make_base_image() { # $1: rootfs tar, $2: image name
  local ctr
  ctr=$(buildah from scratch)
  containers+=("$ctr")
  buildah add --quiet "$ctr" "$1" / > /dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd /bin/bash --label "org.opencontainers.image.description=Debian $SUITE (debootstrap) + CPU $torch_wheel, base of the lsa-ds CPU image" \
    "$ctr"
  # Security updates, then CPU torch from the wheelhouse: as an NGC image brings its own torch, this base
  # brings the one the Dockerfile then keeps (pinned to the installed version, never reinstalled).
  buildah run --isolation chroot --env DEBIAN_FRONTEND=noninteractive --env PIP_ROOT_USER_ACTION=ignore \
    -v "$WHEELHOUSE:/wheelhouse:ro" "$ctr" -- sh -ec "
    apt-get update -q > /dev/null && apt-get upgrade -y -q > /tmp/upgrade.log 2>&1 || { tail -n 20 /tmp/upgrade.log; exit 1; }
    echo \"base: \$(grep -c '^Setting up' /tmp/upgrade.log) packages upgraded from $SUITE-updates/-security\"
    rm -rf /var/lib/apt/lists/* /tmp/upgrade.log
    python -m pip install -q --break-system-packages --no-cache-dir --no-index --find-links /wheelhouse '$TORCH_SPEC'
    python -W ignore -c 'import sys, torch; assert not torch.cuda.is_available(); print(\"base: python\", sys.version.split()[0], \"torch\", torch.__version__)'
  " | while IFS= read -r line; do log "$line"; done
  buildah commit --quiet --rm "$ctr" "$2" > /dev/null
  containers=("${containers[@]/$ctr/}")
}

rootfs_key=$({
  declare -f make_rootfs_tar
  echo "$SUITE $MIRROR $SECURITY_MIRROR $PACKAGES"
} | key_of)
ROOTFS_TAR=$CACHE/rootfs-$SUITE-$rootfs_key.tar
base_key=$({
  echo "$rootfs_key $torch_wheel"
  declare -f make_base_image
} | key_of)
BASE_IMAGE=$BASE_REPO:$base_key
if buildah inspect --type image "$BASE_IMAGE" > /dev/null 2>&1; then
  log "base: reused $BASE_IMAGE"
else
  if [ -f "$ROOTFS_TAR" ]; then
    log "base: reusing root filesystem $ROOTFS_TAR"
  else
    t=$SECONDS
    log "base: debootstrap $SUITE from $MIRROR ($PACKAGES)"
    make_rootfs_tar "$ROOTFS_TAR"
    for old in "$CACHE"/rootfs-*.tar; do
      [ "$old" = "$ROOTFS_TAR" ] || rm -f "$old"
    done
    log "base: root filesystem $(du -sh "$ROOTFS_TAR" | cut -f1) in $((SECONDS - t)) s"
  fi
  t=$SECONDS
  make_base_image "$ROOTFS_TAR" "$BASE_IMAGE"
  # Older bases of this script are not needed any more (their derived layers go with `buildah rmi --prune`).
  buildah images --noheading --format '{{.Name}}:{{.Tag}}' --filter "reference=$BASE_REPO" | while read -r old; do
    [ "$old" = "$BASE_IMAGE" ] || buildah rmi "$old" > /dev/null 2>&1 || true
  done
  log "base: $BASE_IMAGE imported and torch installed in $((SECONDS - t)) s"
fi

# --- 3. the image: docker/Dockerfile with the CPU build args -------------------------------------------
log "build: buildah bud -f docker/Dockerfile -t $IMAGE (BASE_IMAGE=$BASE_IMAGE)"
previous=$(buildah images --noheading --quiet --no-trunc "$IMAGE" 2> /dev/null || true)
t=$SECONDS
buildah bud --isolation chroot --layers --force-rm --pull=never -f docker/Dockerfile -t "$IMAGE" \
  --build-arg BASE_IMAGE="$BASE_IMAGE" \
  --build-arg PIP_FIND_LINKS=/wheelhouse --build-arg PIP_NO_INDEX=1 \
  -v "$WHEELHOUSE:/wheelhouse:ro" . > "$CACHE/build.log" 2>&1 || {
  tail -n 40 "$CACHE/build.log" >&2
  die "buildah bud failed, the whole log is $CACHE/build.log"
}
build_s=$((SECONDS - t))
# The image this tag named before, if the build changed it (its cached layers go with `buildah rmi --prune`).
if [ -n "$previous" ] && [ "$previous" != "$(buildah images --noheading --quiet --no-trunc "$IMAGE")" ]; then
  buildah rmi "$previous" > /dev/null 2>&1 || true
fi
size=$(buildah images --noheading --format '{{.Size}}' "$IMAGE" | head -n 1)
log "build time: $build_s s (buildah bud; log $CACHE/build.log)"
log "image size: $size, $IMAGE"

# --- 4. lsa in the image, as its non-root user ---------------------------------------------------------
# Host folders mounted where launch/docker-run.sh mounts them: runs/, data/ and .cache/ (token cache,
# DeepSpeed's JIT-built op in TORCH_EXTENSIONS_DIR=/workspace/.cache/torch_extensions, HF_HOME).
WORK=$CACHE/workspace
remove_tree "$WORK/runs"
if [ "${LSA_CONTAINER_FRESH:-0}" = 1 ]; then
  remove_tree "$WORK/.cache"
fi
mkdir -p "$WORK/runs" "$WORK/data" "$WORK/.cache"
ctr=$(buildah from --pull=never "$IMAGE")
containers+=("$ctr")
# The image declares these as VOLUMEs; `buildah run` would mount a fresh copy of each as well as the -v
# below, and which one ends up on top varies from run to run. Dropping the declarations from this working
# container (the image keeps them) leaves only the host folders.
buildah config --volume /workspace/runs- --volume /workspace/data- --volume /workspace/.cache- "$ctr"
owner=$(buildah run --isolation chroot "$ctr" -- id -u lsa):$(buildah run --isolation chroot "$ctr" -- id -g lsa)
chown -R "$owner" "$WORK"
in_image() {
  buildah run --isolation chroot --user lsa --workingdir /workspace \
    --env HOME=/home/lsa --env DS_ACCELERATOR=cpu --env OMP_NUM_THREADS=1 --env TOKENIZERS_PARALLELISM=false \
    -v "$WORK/runs:/workspace/runs" -v "$WORK/data:/workspace/data" -v "$WORK/.cache:/workspace/.cache" \
    "$ctr" -- "$@"
}
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "== in the image as $(in_image id -un) (uid $(in_image id -u)): $(in_image python -c 'import sys, torch, deepspeed, transformers; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}")' 2> /dev/null)"
echo "== lsa --help (through the image's entrypoint)"
in_image /usr/local/bin/lsa-entrypoint lsa --help

echo "== lsa train tiny-cpu: 3 steps on 2 ranks, a small slice of the stdlib corpus"
t=$SECONDS
in_image lsa train tiny-cpu --nproc 2 --master_port "$port" \
  --set run.name=$RUN_NAME --set run.log_every=1 \
  --set train.max_steps=3 --set train.micro_batch_size=4 --set eval.windows=2 \
  --set "data.sources=[{name: stdlib, type: stdlib, max_documents: 160, holdout: 0.1, exclude: ['test/*', 'idlelib/*']}]" \
  --set data.tokenizer.train_chars=200000
train_s=$((SECONDS - t))
final_loss=$(in_image python -c "
import json, math
steps = [r for r in map(json.loads, open('runs/$RUN_NAME/metrics.jsonl')) if 'loss' in r and r.get('kind') != 'eval']
last = steps[-1]
assert math.isfinite(last['loss']), last
print(f\"{last['loss']:.4f} (step {last['step']})\")")

echo "== lsa export runs/$RUN_NAME --out runs/$RUN_NAME-export"
in_image lsa export "runs/$RUN_NAME" --out "runs/$RUN_NAME-export"
[ -s "$WORK/runs/$RUN_NAME-export/model.safetensors" ] && [ -s "$WORK/runs/$RUN_NAME-export/config.json" ] ||
  die "the export has no model.safetensors/config.json"

echo "== lsa eval runs/$RUN_NAME-export --tasks ppl --windows 2 --lengths 64,128"
in_image lsa eval "runs/$RUN_NAME-export" --out "runs/$RUN_NAME-eval" --tasks ppl --windows 2 --lengths 64,128 \
  --no-progress
[ -s "$WORK/runs/$RUN_NAME-eval/report.md" ] && [ -s "$WORK/runs/$RUN_NAME-eval/report.json" ] ||
  die "lsa eval wrote no report"

echo "== summary"
echo "image: $IMAGE from $BASE_IMAGE"
echo "build time: $build_s s (buildah bud)"
echo "image size: $size (buildah images)"
echo "train: $train_s s on 2 ranks; final loss: $final_loss"
echo "export: $WORK/runs/$RUN_NAME-export ($(find "$WORK/runs/$RUN_NAME-export" -maxdepth 1 -type f -printf '%f '))"
echo "eval report: $WORK/runs/$RUN_NAME-eval/report.md"
echo "total: $((SECONDS - started)) s"
