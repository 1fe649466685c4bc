"""How every `lsa` command prints `--help`: each default once, and what the command writes where.

argparse's ArgumentDefaultsHelpFormatter appends "(default: ...)" to every option, also where the
help text already explains the default and where there is none (None, [], False): printed twice
or as noise. This formatter appends it only when the text says nothing about a default and there
is a value to show; descriptions and epilogs keep their line breaks.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console


def console() -> Console:
    """A rich Console for a command's tables. At a terminal it takes the terminal's width; written
    to a log file or a pipe, rich would assume 80 columns and cut cells ("3.286e+…") or wrap
    phrases, so there it is wide enough that every table keeps its natural width."""
    return Console() if sys.stdout.isatty() else Console(width=1000)


WRITES = {
    "train": "runs/<run.name>/ (config.yaml, ds_config.json, metrics.jsonl, tb/, run.json, checkpoints/, "
             "curves.png, and hf/ when finished); the token cache under data.cache_dir if missing",
    "demo": "runs/tiny-cpu-*/ (one run directory per arm; with --from-scratch also the base, runs/tiny-cpu-base/) "
            "and runs/demo-eval/ (report.md, report.json, PNGs); never the committed demo/tiny-cpu-base/",
    "export": "the Hugging Face folder --out (replaced if it exists)",
    "prepare": "the token cache under data.cache_dir (a trained tokenizer and token shards); prints a summary",
    "data": "nothing (prints decoded windows)",
    "eval": "report.json, report.md and PNG plots in --out (default runs/<name>/eval for a single run)",
    "sweep": "one run directory per point under run.output_dir, and <output_dir>/sweeps/<name>/ (plan, report)",
    "synth": "results.json, table.md and mse_vs_length.png under --out (default runs/synth)",
    "recipes": "nothing, or with `copy` the file DEST (never over an existing file)",
    "config-doc": "nothing (prints Markdown)",
}
"""What each command writes, where: its `--help` epilog and the `lsa --help` table."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default is argparse.SUPPRESS or (  # 0 is a value
            isinstance(default, (list, str)) and not default)
        if ("default" in text.lower() or nothing
                or action.option_strings == [] or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        return f"{text} (default: %(default)s)"


def command_parser(command: str, description: str, cls: type[argparse.ArgumentParser] = argparse.ArgumentParser,
           ) -> argparse.ArgumentParser:
    """`lsa COMMAND`'s parser: help ends with one line saying what the command writes, where."""
    return cls(prog=f"lsa {command}", description=description, epilog=f"writes: {WRITES[command]}",
               formatter_class=HelpFormatter)
