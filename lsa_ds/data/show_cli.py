"""`lsa data show RECIPE --index N`: decode training (or eval) windows back to text for eyeballing."""

from __future__ import annotations

import numpy as np

from lsa_ds.cli_help import command_parser
from lsa_ds.data import build_windows, open_cache
from lsa_ds.data.tokenizer import Tokenizer
from lsa_ds.recipe import add_recipe_args, recipe_from_args


def render_window(tok: Tokenizer, window: np.ndarray) -> str:
    """Decoded text with document boundaries made visible as ⟨bos⟩ / ⟨eos⟩."""
    marks = {tok.bos_id: "⟨bos⟩", tok.eos_id: "⟨eos⟩"}
    out, piece = [], []
    for t in window.tolist():
        if t in marks:
            out.append(tok.decode(piece))
            out.append(marks[t])
            piece = []
        else:
            piece.append(t)
    out.append(tok.decode(piece))
    return "".join(out)


def main(argv: list[str]) -> int:
    parser = command_parser("data", __doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="decode windows of the global order")
    add_recipe_args(show)
    show.add_argument("--index", type=int, default=0, help="first global sample index")
    show.add_argument("--count", type=int, default=1, help="how many windows")
    show.add_argument("--split", choices=("train", "eval"), default="train")
    show.add_argument("--ids", action="store_true", help="print token ids instead of text")
    args = parser.parse_args(argv)
    recipe = recipe_from_args(args)
    cache = open_cache(recipe.data)
    windows = build_windows(recipe, cache, args.split)
    for i in range(args.index, args.index + args.count):
        s, epoch, k = windows.locate(i)
        w = windows[i]
        print(f"── sample {i}: source {windows.sources[s].name}, epoch {epoch}, window {k}, {len(w)} tokens ──")
        print(w.tolist() if args.ids else render_window(cache.tokenizer, w))
    return 0
