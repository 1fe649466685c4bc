#!/usr/bin/env bash
# Create .venv (if needed) and install lsa-ds with pinned dependencies. Safe to rerun.
# CPU torch goes in first: a bare `torch` requirement would otherwise pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LSA_VENV:-.venv}
TORCH_SPEC=${LSA_TORCH:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
"$PY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
"$PY" -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[dev]"
echo "installed lsa-ds into $VENV ($("$PY" -c 'import os, torch; os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu"); import deepspeed, transformers; print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}")' 2>/dev/null))"
