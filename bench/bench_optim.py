"""Optimizer benchmark: torch's fused AdamW (`optim.impl=fused`, the default) against its per-tensor
loop (`optim.impl=torch`, the default before), side by side on the `cpu-h192` preset (hidden 192,
4 layers: the calibration shape of docs/demo-calibration.md; the demo itself now trains the smaller `demo-h64`).

    python bench/bench_optim.py [--pairs 3] [--steps 16] [--seq-len 512] [--out bench/out/optim]

Each arm is a real `lsa train` launch (2 ranks, ZeRO-3, CPU) of the cpu-h192 preset on the embedded
stdlib corpus with the same windows. The arms alternate A B A B ... and the fused / loop ratio is
taken pair by pair from the median `step_time` of each run's metrics.jsonl (first 3 steps dropped:
warm-up), so drift of a shared machine's speed moves both sides of a ratio alike. Not a test: it
only measures; bench/README.md records its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"fused": "optim.impl=fused", "loop": "optim.impl=torch"}


def run_arm(arm: str, args, out: Path, pair: int) -> float:
    name = f"{arm}-{pair}"
    sets = ["model.preset=cpu-h192", f"model.overrides={{max_position_embeddings: {args.seq_len}}}", f"train.seq_len={args.seq_len}", f"train.max_steps={args.steps}",
            "train.micro_batch_size=2", "align.enabled=true", "align.alpha=0.1", "eval.windows=2",
            f"eval.lengths=[{args.seq_len}]", f"run.output_dir={out}", f"run.name={name}", ARMS[arm]]
    cmd = [sys.executable, "-m", "lsa_ds.cli", "train", str(ROOT / "recipes" / "tiny-cpu.yaml"), "--nproc", "2",
           "--overwrite", *[a for s in sets for a in ("--set", s)]]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   env={**os.environ, "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"})
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time"] for r in rows if r.get("kind") != "eval" and r["step"] > 3]
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--out", type=Path, default=None, help="run directories (default: a temporary folder)")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-optim-"))
    pairs = []
    for i in range(args.pairs):
        fused, loop = run_arm("fused", args, out, i), run_arm("loop", args, out, i)
        pairs.append((fused, loop))
        print(f"pair {i}: fused {fused:.3f} s/step, loop {loop:.3f} s/step, fused/loop {fused / loop:.3f}", flush=True)
    ratios = sorted(f / l for f, l in pairs)
    print(f"median step time: fused {statistics.median(f for f, _ in pairs):.3f} s, "
          f"loop {statistics.median(l for _, l in pairs):.3f} s; fused/loop per pair: median {statistics.median(ratios):.3f} "
          f"(min {ratios[0]:.3f}, max {ratios[-1]:.3f}) over {len(pairs)} pairs")


if __name__ == "__main__":
    main()
