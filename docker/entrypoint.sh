#!/usr/bin/env bash
# Image entrypoint: hand over to NGC's own entrypoint when the base image has one (it prints the banner
# and sets up CUDA forward compatibility for older drivers), then exec the command (`lsa ARGS...`).
set -euo pipefail
if [ -x /opt/nvidia/nvidia_entrypoint.sh ]; then
  exec /opt/nvidia/nvidia_entrypoint.sh "$@"
fi
exec "$@"
