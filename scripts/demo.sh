#!/usr/bin/env bash
# Install (scripts/install.sh), then run the embedded default end to end: `lsa demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export DS_ACCELERATOR=cpu
exec "${LSA_VENV:-.venv}/bin/lsa" demo "$@"
