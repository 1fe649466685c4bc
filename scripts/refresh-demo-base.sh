#!/usr/bin/env bash
# Retrain the demo's stage-1 base model and replace the committed copy in demo/tiny-cpu-base/:
# `lsa train recipes/tiny-cpu.yaml` --nproc 1 (what `lsa demo --from-scratch` runs first; ~9 min),
# then the run's recipe, metrics, run.json, curves and hf/ export plus the console log are copied
# (not its checkpoints or TensorBoard files). Review `git diff --stat demo/` before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread: the committed run, step for step
OUT=demo/tiny-cpu-base
RUN=${LSA_DEMO_BASE_RUN:-runs/tiny-cpu-base}
"${LSA_VENV:-.venv}/bin/lsa" train recipes/tiny-cpu.yaml --nproc 1 --overwrite --set "run.output_dir=$(dirname "$RUN")" \
  2>&1 | tee /tmp/tiny-cpu-base.log
rm -rf "$OUT.new" && mkdir -p "$OUT.new"
cp -r "$RUN"/config.yaml "$RUN"/metrics.jsonl "$RUN"/run.json "$RUN"/curves.png "$RUN"/hf "$OUT.new"/
grep -v "^\s*$" /tmp/tiny-cpu-base.log > "$OUT.new/train.log"
[ -f "$OUT/README.md" ] && cp "$OUT/README.md" "$OUT.new/"
rm -rf "$OUT" && mv "$OUT.new" "$OUT"
du -sh "$OUT"
