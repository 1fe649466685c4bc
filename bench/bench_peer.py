"""The peer side by side: HF Trainer + DeepSpeed ZeRO-3 with the objective written the straightforward
way, against lsa-ds's step, the same model, windows, JSON and settings; 2 CPU ranks, fp32, gloo.

    nice -n 5 python bench/bench_peer.py [--size 20M] [--pair-len 1024] [--pairs 3] [--cap-gib 3] [--budget-min 15]
    nice -n 19 python bench/bench_peer.py --quick

Variants, each its own 2-rank launch (bench/capped.py: resident-set cap, time limit):
- `lsa-align`: lsa-ds's `Engine.train_step` (what `lsa train` calls per step; bench_cost.py's ranks),
  alignment on: one forward of [A; S], chunked CE + 0.1 x SCE, no [rows, L, V] logits;
- `hf-align`: `transformers.Trainer` with `deepspeed=ds_configs/zero3.json` (the template lsa-ds
  resolves) and a `compute_loss` override: two forwards (long, short), full [B, L, V] logits, CE on
  both views plus 0.1 x SCE over the overlap through autograd;
- `lsa-plain` / `hf-plain`: the baseline, CE on the long view only (alignment off / Trainer's own loss).
The same windows (one RNG) and shifts (`draw_shifts`) on both sides; AdamW (fused), lr 3e-4, betas
(0.9, 0.95), weight decay 0.1, clipping 1.0, micro-batch 1 per rank.

First `--pairs` pairs at `--pair-len`, alternating lsa and hf (a generous cap: the pair must run),
the ratio pair by pair of the last step's wall time; then, while `--budget-min` lasts, the longest L
(doubling from `--pair-len`) at which each variant completes its steps under `--cap-gib` per rank.
Lines of user code: the lines between the `user code` markers below (HF) and the recipe keys (lsa).
Not a test: it only measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import bench_cost  # bench/bench_cost.py, beside this script: lsa-ds's ranks, the model shapes
from capped import run_capped
from ranks import status_mib

from lsa_ds.train.distributed import exit_rank

VARIANTS = ("lsa-align", "hf-align", "lsa-plain", "hf-plain")
ALPHA = 0.1


def hf_rank(args) -> None:
    import os
    import tempfile

    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainerCallback, TrainingArguments

    from lsa_ds.align.views import draw_shifts

    L, V, align = args.seq_len, bench_cost.VOCAB, args.variant == "hf-align"
    shape = dict(bench_cost.SIZES[args.size])
    tie = shape.pop("tie")
    rank = int(os.environ["RANK"])
    # accelerate takes the DeepSpeed path only with LOCAL_RANK set (the launcher's --no_local_rank leaves it out)
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    # the windows lsa-ds's ranks draw (bench_cost.rank_main: one RNG per rank); Trainer's sampler deals them out
    windows, shifts, e_max = [], [], L // 2
    for r in range(int(os.environ["WORLD_SIZE"])):
        rng = np.random.default_rng(r)
        windows += [rng.integers(0, V, size=(1, L + e_max + 1))[0] for _ in range(args.steps)]
        shifts += [int(draw_shifts([int(rng.integers(1 << 30))], 0, 1, e_max)[0]) for _ in range(args.steps)]
    times, prof = [], (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
                       if args.profile
                       else None)

    class StepTimes(TrainerCallback):  # wall time between the ends of consecutive optimizer steps
        def on_step_begin(self, a, state, control, **kw):
            times.append(time.perf_counter()) if not times else None
            if prof and state.global_step == args.steps - 1:  # the timed (last) step, profiled
                prof.start()

        def on_step_end(self, a, state, control, **kw):
            if prof and state.global_step == args.steps:
                prof.stop()
            times.append(time.perf_counter())

    # Not user code, CPU only: with no accelerator backend found, accelerate's DeepSpeed path counts one
    # process although torch.distributed (through DeepSpeed) has both; TrainingArguments fills DeepSpeed's
    # "auto" batch sizes from that count. Set up the shared state first, with the group's figures.
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    state = PartialState()
    state.backend, state.num_processes = "gloo", torch.distributed.get_world_size()
    state.process_index = state.local_process_index = torch.distributed.get_rank()
    del os.environ["ACCELERATE_USE_DEEPSPEED"]

    # ---- user code begin (what someone writes for Trainer + DeepSpeed; the RNG above stands in for data)
    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(windows)

        def __getitem__(self, i):
            if align:
                return {"window": torch.as_tensor(windows[i]), "shift": shifts[i]}
            return {"input_ids": torch.as_tensor(windows[i][:L]), "labels": torch.as_tensor(windows[i][:L])}

    class AlignTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            w, e = inputs["window"], inputs["shift"]
            long_ids, long_labels = w[:, :L], w[:, 1:L + 1]
            short_ids = torch.stack([w[b, s:s + L] for b, s in enumerate(e.tolist())])
            short_labels = torch.stack([w[b, s + 1:s + L + 1] for b, s in enumerate(e.tolist())])
            long_logits = model(input_ids=long_ids).logits.float()  # [B, L, V]
            short_logits = model(input_ids=short_ids).logits.float()
            ce = F.cross_entropy(torch.cat([long_logits, short_logits]).flatten(0, 1),
                                 torch.cat([long_labels, short_labels]).flatten())
            sce = []
            for b, s in enumerate(e.tolist()):  # long position t pairs with short position t - s
                lp, lq = long_logits[b, s:].log_softmax(-1), short_logits[b, :L - s].log_softmax(-1)
                sce.append(-(lp.exp() * lq).sum(-1) - (lq.exp() * lp).sum(-1))
            return ce + ALPHA * torch.cat(sce).mean()

    training = TrainingArguments(
        output_dir=tempfile.mkdtemp(), deepspeed=args.ds_json, max_steps=args.steps, per_device_train_batch_size=1,
        learning_rate=3e-4, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0,
        optim="adamw_torch_fused", lr_scheduler_type="cosine", save_strategy="no", report_to=[],
        remove_unused_columns=False, disable_tqdm=True, ddp_backend="gloo",
        logging_steps=10**6, seed=1234, accelerator_config={"use_configured_state": True})  # CPU only: the state above
    config = LlamaConfig(vocab_size=V, num_key_value_heads=shape["num_attention_heads"], tie_word_embeddings=tie,
                         max_position_embeddings=L, **shape)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")  # ZeRO-3: partitioned at init
    trainer = (AlignTrainer if align else Trainer)(model=model, args=training, train_dataset=Windows())
    # ---- user code end
    trainer.add_callback(StepTimes())
    trainer.train()
    step = [b - a for a, b in zip(times, times[1:])]
    peak = torch.tensor([status_mib("VmHWM")])
    torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    if rank == 0:
        Path(args.result).write_text(json.dumps({"step_s": step[-1], "all_step_s": step, "peak_rss_mib": peak.item(),
                                                 "tokens_per_s": 2 * L / step[-1],
                                                 "profile": bench_cost.profile_groups(prof) if prof else None}))


def user_lines(tag: str) -> int:
    """Non-blank, non-comment lines between this file's `user code` markers."""
    text = Path(__file__).read_text().split("# ---- user code " + "begin")[1].split("# ---- user code " + "end")[0]
    return sum(1 for line in text.splitlines()[1:] if line.strip() and not line.strip().startswith("#"))


def launch(variant: str, L: int, args, cap_gib: float, timeout: float) -> dict:
    align, profile = variant.endswith("align"), ["--profile"] if args.profile else []
    if variant.startswith("lsa"):
        over = bench_cost.overrides(args.size, L, align, [], args.steps)
        res = run_capped(bench_cost.__file__, 2, ["--steps", str(args.steps), "--overrides", json.dumps(over), *profile],
                         args.out / "peer-point.json", cap_gib * 1024, timeout, bench_cost.MALLOC)
    else:
        res = run_capped(__file__, 2, ["--variant", variant, "--size", args.size, "--seq-len", str(L),
                                       "--steps", str(args.steps), "--ds-json", str(Path("ds_configs/zero3.json")),
                                       *profile], args.out / "peer-point.json", cap_gib * 1024, timeout, bench_cost.MALLOC)
    res |= {"variant": variant, "seq_len": L}
    shown = (f"step {res['step_s']:6.2f} s  peak {res['peak_rss_mib']:6.0f} MiB" if res["status"] == "ok"
             else f"{res['status']} (watchdog saw {res['watch_rss_mib']:.0f} MiB) {res.get('log_tail', '')}")
    print(f"  {variant:9s} L {L:6d}  {shown}  launch {res['wall_s']:.0f} s", flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="20M", help=f"of {', '.join(bench_cost.SIZES)}")
    p.add_argument("--pair-len", type=int, default=1024)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per launch (the last one is timed)")
    p.add_argument("--cap-gib", type=float, default=3.0, help="per-rank resident-set cap of the longest-L search")
    p.add_argument("--budget-min", type=float, default=15)
    p.add_argument("--quick", action="store_true", help="the tiny model, L 128, one pair, search up to 256")
    p.add_argument("--profile", action="store_true",
                   help="instead of pairs and search: one launch each of lsa-align and hf-align at --pair-len, "
                        "rank 0's last step under torch.profiler, self CPU time by op group side by side")
    p.add_argument("--out", type=Path, default=Path("bench/out"))
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    p.add_argument("--ds-json", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank:
        hf_rank(args)
        exit_rank(0)
    l_max = 1 << 20
    if args.quick:
        args.size, args.pair_len, args.pairs, args.budget_min, l_max = "quick", 128, 1, 4, 256
    args.out.mkdir(parents=True, exist_ok=True)
    end, rows = time.monotonic() + 60 * args.budget_min, []
    name = f"peer{'-quick' if args.quick else ''}.json"
    save = lambda: (args.out / name).write_text(json.dumps(rows, indent=1))  # noqa: E731
    if args.profile:
        got = {v: launch(v, args.pair_len, args, 8.0, 60 * args.budget_min) for v in ("lsa-align", "hf-align")}
        (args.out / f"peer-profile{'-quick' if args.quick else ''}.json").write_text(json.dumps(got, indent=1))
        groups = dict.fromkeys(g for r in got.values() if r.get("profile") for g in r["profile"]["groups"])
        print(f"{'self CPU s, rank 0':24s} {'lsa-align':>10s} {'hf-align':>10s}")
        for g in [*groups, "total_s"]:
            cells = [(r["profile"]["groups"].get(g, 0.0) if g != "total_s" else r["profile"]["total_s"])
                     if r.get("profile") else float("nan") for r in got.values()]
            print(f"{g:24s} {cells[0]:10.2f} {cells[1]:10.2f}")
        return
    print(f"size {args.size}, pairs at L {args.pair_len}, cap {args.cap_gib} GiB per rank in the search", flush=True)
    for i in range(args.pairs):  # alternating, so drift in the machine's load hits both sides alike
        for v in VARIANTS:
            rows.append({**launch(v, args.pair_len, args, 8.0, max(60.0, end - time.monotonic())), "phase": "pair",
                         "pair": i})
            save()
    for kind in ("align", "plain"):
        got = [(a, b) for a, b in zip([r for r in rows if r["variant"] == f"lsa-{kind}" and r["phase"] == "pair"],
                                      [r for r in rows if r["variant"] == f"hf-{kind}" and r["phase"] == "pair"])]
        ratios = [a["step_s"] / b["step_s"] for a, b in got if a["status"] == b["status"] == "ok"]
        if ratios:
            print(f"lsa / hf step time, {kind}, pair by pair: {[round(r, 3) for r in ratios]}; median "
                  f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})", flush=True)
    for v in VARIANTS:  # the longest L under the cap; the pair length counts when its peak was under the cap
        first = [r for r in rows if r["variant"] == v and r["status"] == "ok"]
        L, last = args.pair_len, (first[-1]["wall_s"] if first else None)
        if first and max(r["peak_rss_mib"] for r in first) <= args.cap_gib * 1024:
            L *= 2
        while L <= l_max and end - time.monotonic() > (2.4 * last if last else 60):
            res = launch(v, L, args, args.cap_gib, end - time.monotonic())
            rows.append({**res, "phase": "search"})
            save()
            if res["status"] != "ok":
                break
            L, last = 2 * L, res["wall_s"]
    print(f"user code: Trainer side {user_lines('hf')} lines of Python (both variants); lsa side "
          f"{len(bench_cost.overrides(args.size, args.pair_len, True, [], args.steps))} recipe keys", flush=True)


if __name__ == "__main__":
    main()
