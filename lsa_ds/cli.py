"""`lsa` console script: dispatches to the module that owns each command.

Each command module exposes `main(argv: list[str]) -> int` and owns its own argument parser, so
this file stays a table. `UserError` becomes one line on stderr and exit code 2; every other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

from lsa_ds.cli_help import WRITES
from lsa_ds.errors import UserError
from lsa_ds.quiet import quiet_known_noise

# command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lsa_ds.train.cli", "train a recipe on DeepSpeed (launches the ranks)"),
    "demo": ("lsa_ds.demo", "the embedded default end to end: base 128 -> extended 512 on CPU, four arms"),
    "export": ("lsa_ds.train.export", "write a checkpoint as a Hugging Face folder"),
    "prepare": ("lsa_ds.data.prepare_cli", "tokenize the recipe's sources into the token cache"),
    "data": ("lsa_ds.data.show_cli", "inspect prepared data: `lsa data show RECIPE --index N`"),
    "eval": ("lsa_ds.eval.cli", "evaluate runs or HF models: perplexity vs length, passkey, misalignment"),
    "sweep": ("lsa_ds.sweep.cli", "expand an ablation grid into runs; run them, print their launch commands, or --report"),
    "synth": ("lsa_ds.synthetic.cli", "the paper's synthetic length-generalisation study (§3)"),
    "recipes": ("lsa_ds.recipe.catalog", "list the shipped recipes, or copy one to edit: `lsa recipes copy NAME FILE`"),
    "config-doc": ("lsa_ds.recipe.reference", "print the recipe reference (Markdown) from the schema"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}\n  {'':<{width}}    writes: {WRITES[name]}"
                      for name, (_, help_) in COMMANDS.items())
    return f"usage: lsa COMMAND [ARGS...]\n\ncommands:\n{rows}\n\n`lsa COMMAND --help` for a command's options."


def _take_local_rank(argv: list[str]) -> list[str]:
    """Drop the `--local_rank=N` (or `--local_rank N`) the deepspeed launcher puts before the
    command of a `deepspeed --module lsa_ds.cli ...` rank, keeping N in LOCAL_RANK where the
    launcher has not set it already."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            os.environ.setdefault("LOCAL_RANK", arg.partition("=")[2])
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ.setdefault("LOCAL_RANK", argv[i + 1])
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _take_local_rank(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"lsa: unknown command '{argv[0]}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    quiet_known_noise()
    try:
        return int(module.main(argv[1:]) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
