"""Copy retrieval and the misalignment split of one model, side by side at two context lengths.

    python bench/bench_copy.py                                   # the demo's committed base model
    python bench/bench_copy.py --model runs/tiny-cpu-extended/hf --split-length 512

Held-out documents: the eval split of the recipe's repeated-span source (default: the demo's
stage-2 recipe tiny-cpu-extend.yaml, whose spans reach up to ~480 tokens back), tokenized with the
model's own tokenizer. Prints copy-retrieval accuracy by distance at each --contexts value (inside
and beyond L0 pooled too) and the overlap-misalignment split at --split-length, and writes
bench/out/copy-<model>.json. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lsa_ds.eval.copy_retrieval import measure_copy_retrieval
from lsa_ds.eval.misalign_split import measure_misalign_split
from lsa_ds.eval.repeat_docs import labelled_documents, labelled_windows
from lsa_ds.eval.targets import load_model, resolve
from lsa_ds.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "demo/tiny-cpu-base/hf"))
    ap.add_argument("--recipe", default="tiny-cpu-extend.yaml", help="whose repeated-span source gives the documents")
    ap.add_argument("--l0", type=int, default=128, help="the base model's training length (pools inside/beyond)")
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--split-length", type=int, default=128)
    ap.add_argument("--windows", type=int, default=512, help="windows for the split")
    ap.add_argument("--max-per-bucket", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=400_000, help="held-out tokens read")
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest for tiny models on shared cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    target = resolve(args.model)
    model = load_model(target, torch.device("cpu"), torch.float32)
    data = load_recipe(args.recipe).data
    t0 = time.perf_counter()
    docs = labelled_documents(data, target.tokenizer, max_tokens=args.max_tokens)
    n_tok, n_spans = sum(len(d.tokens) for d in docs), sum(len(d.spans) for d in docs)
    print(f"{target.name}: {len(docs)} held-out documents, {n_tok:,} tokens, {n_spans:,} copies "
          f"({time.perf_counter() - t0:.0f}s)")
    out = {"model": str(args.model), "recipe": args.recipe, "documents": len(docs), "tokens": n_tok, "copies": n_spans}

    for context in args.contexts:
        t0 = time.perf_counter()
        res = measure_copy_retrieval(model, docs, context, max_per_bucket=args.max_per_bucket, per_token=True)
        inside, beyond = res.within(1, args.l0), res.within(args.l0, context + 1)
        tok_in, tok_out = res.tokens_within(1, args.l0), res.tokens_within(args.l0, context + 1)
        print(f"\ncopy retrieval, context {context} (prompt {res.prompt_tokens}; {time.perf_counter() - t0:.0f}s)")
        print(res.text())
        for name, exact, tokens in (("< L0", inside, tok_in), (">= L0", beyond, tok_out)):
            if exact.n:
                print(f"distance {name}={args.l0}: exact {exact.text()}  tokens {tokens.text()}  n={exact.n}")
        out[f"copy@{context}"] = {**res.to_dict(), "inside_l0": inside.to_dict(), "beyond_l0": beyond.to_dict(),
                                  "tokens_inside_l0": tok_in and tok_in.to_dict(),
                                  "tokens_beyond_l0": tok_out and tok_out.to_dict()}

    L = args.split_length
    windows, dist = labelled_windows(docs, L + 1, args.windows)
    t0 = time.perf_counter()
    split = measure_misalign_split(model, windows, dist, L, seed=0)
    print(f"\nmisalignment split, overlap, L={L}, {len(windows)} windows ({time.perf_counter() - t0:.0f}s)")
    print(split.text())
    out[f"split@{L}"] = split.to_dict()

    dest = ROOT / "bench/out" / f"copy-{target.name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {dest}")


if __name__ == "__main__":
    main()
