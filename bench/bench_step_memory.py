"""Peak RSS of the training module without DeepSpeed: pairs (alpha 0.1) vs no pairs (alpha 0).

    python bench/bench_step_memory.py [--runs 2]

`bench_step.py` measures alpha 0.1 at 1.05-1.12x the peak RSS of alpha 0 under 2-rank ZeRO-3. This
isolates the model + chunked losses from DeepSpeed: `LMWithLoss` (LLaMA hidden 256, 4 layers,
L = 1024, V = 32000, one window -> [A; S]) runs three forward + backward passes in a fresh process per
variant and run, single-threaded; the figure is VmHWM growth over those passes. Not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

L, V = 1024, 32000


def child(mode: str) -> None:
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lsa_ds.align.views import draw_shifts, make_views
    from lsa_ds.recipe import load_recipe
    from lsa_ds.train.engine import LMWithLoss

    def hwm() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=L)
    module = LMWithLoss(LlamaForCausalLM(cfg), load_recipe(None, [f"train.seq_len={L}"]))
    w = np.random.default_rng(0).integers(0, V, size=(1, L + L // 2 + 1))
    v = {k: torch.as_tensor(x) for k, x in make_views(w, L, draw_shifts([1], 0, 1, L // 2)).items()}
    pairs = {"pair_mask": v["pair_mask"], "shifts": v["shifts"]} if mode == "pairs" else {}
    before = hwm()
    for _ in range(3):
        out = module(input_ids=v["input_ids"], labels=v["labels"], position_ids=v["position_ids"], **pairs)
        loss = out["ce_sum"] / out["ce_count"]
        if pairs:
            loss = loss + 0.1 * out["div_sum"] / out["pair_count"]
        loss.backward()
    print(json.dumps({"mode": mode, "peak_mib": hwm() - before}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--child", choices=("pairs", "nopairs"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child)
    peaks: dict[str, list[float]] = {"nopairs": [], "pairs": []}
    for _ in range(args.runs):
        for mode in peaks:  # interleaved, each in a fresh process
            out = subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True, text=True, check=True)
            peaks[mode].append(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])
    for mode, xs in peaks.items():
        print(f"  {mode:8s} peak RSS growth {', '.join(f'{x:.0f}' for x in xs)} MiB")
    ratio = (sum(peaks["pairs"]) / len(peaks["pairs"])) / (sum(peaks["nopairs"]) / len(peaks["nopairs"]))
    print(f"  pairs / no pairs (means)  {ratio:.3f}")


if __name__ == "__main__":
    main()
