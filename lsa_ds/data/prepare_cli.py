"""`lsa prepare RECIPE`: tokenize the recipe's sources into the token cache and summarise."""

from __future__ import annotations

import json

from rich.table import Table

from lsa_ds.cli_help import command_parser, console
from lsa_ds.data.shards import SourceReport, prepare
from lsa_ds.recipe import add_recipe_args, recipe_from_args


def summary_table(reports: list[SourceReport], manifest_sources: dict) -> Table:
    table = Table(title="prepared token cache")
    for col in ("source", "records", "docs train/eval", "tokens train/eval", "shards", "skipped", "repeated spans",
                "tokens/s"):
        table.add_column(col, justify="left" if col in ("source", "skipped", "repeated spans") else "right")
    for rep in reports:
        splits = manifest_sources[rep.name]["splits"]
        shards = sum(len(s["shards"]) for s in splits.values())
        skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(rep.skipped.items())) or "-"
        total = sum(rep.tokens.values())
        table.add_row(rep.name, f"{rep.records:,}", f"{rep.documents['train']:,} / {rep.documents['eval']:,}",
                      f"{rep.tokens['train']:,} / {rep.tokens['eval']:,}", str(shards), skipped, _repeated(rep),
                      f"{total / max(rep.seconds, 1e-9):,.0f}")
    return table


def _repeated(rep: SourceReport) -> str:
    """What the source's `repeat` option did, so no task shaping goes unseen."""
    if not rep.repeated["spans"]:
        return "-"
    share = rep.repeated["tokens"] / max(1, sum(rep.tokens.values()))
    return f"{rep.repeated['spans']:,} ({rep.repeated['tokens']:,} tokens, {share:.1%})"


def main(argv: list[str]) -> int:
    parser = command_parser("prepare", __doc__)
    add_recipe_args(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    recipe = recipe_from_args(args)

    # a log file or a pipe gets the whole table, not one squeezed into rich's default 80 columns
    out = console()
    folder, reports = prepare(recipe.data, progress=not args.quiet)
    if reports is None:
        out.print(f"token cache up to date: {folder}")
        return 0

    manifest = json.loads((folder / "manifest.json").read_text())
    out.print(summary_table(reports, manifest["sources"]))
    for rep in reports:
        for reason, example in sorted(rep.first_skip.items()):
            out.print(f"  skipped in {rep.name} ({reason}), first: {example}", style="dim")
    out.print(f"token cache: {folder}")
    return 0
