#!/usr/bin/env bash
# The GPU study (recipes/ablations/gpu-study.yaml) end to end on one CUDA GPU: a check that the
# CUDA paths are there (torch sees the GPU, bf16, NCCL), the sweep (stage 1 from scratch, then the
# two arms × two seeds with `lsa eval` after each), and its report copied to docs/study/gpu/ with
# the wall time and the device's name. Expects the package installed (bash scripts/install.sh, or
# LSA_VENV pointing at a venv with a CUDA torch). Estimated ≈ 8 min on an H200; never run so far.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LSA_VENV:-.venv}
OUT=${GPU_STUDY_OUT:-docs/study/gpu}
"$VENV/bin/python" - <<'PY'
import torch, torch.distributed as dist
assert torch.cuda.is_available(), "gpu-study.sh needs a CUDA GPU (torch.cuda.is_available() is False)"
print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"bf16 {torch.cuda.is_bf16_supported()}, NCCL {dist.is_nccl_available()}")
PY
mkdir -p "$OUT"
start=$(date +%s)
"$VENV/bin/lsa" sweep recipes/ablations/gpu-study.yaml --nproc 1 2>&1 | tee "$OUT/sweep.log"
wall=$(( $(date +%s) - start ))
cp runs/sweeps/gpu-study/report* "$OUT"/
{ echo "wall time of \`lsa sweep recipes/ablations/gpu-study.yaml --nproc 1\`: ${wall} s"
  "$VENV/bin/python" -c "import torch; print('device:', torch.cuda.get_device_name(0))"; } > "$OUT/wall-time.txt"
cat "$OUT/wall-time.txt"
