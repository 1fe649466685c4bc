#!/usr/bin/env bash
# Install (scripts/install.sh) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false
exec "${LSA_VENV:-.venv}/bin/python" -m pytest -q "$@"
