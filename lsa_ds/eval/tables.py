"""Markdown tables of the reports (`lsa eval`, `lsa sweep --report`): one way to write a cell and a
table, so every report shows a missing or non-finite number the same way."""

from __future__ import annotations

import json
import math

MISSING = "–"
"""What a cell shows for a number that is absent (None, "") or not finite."""


def number(x, spec: str = ".4f") -> str:
    """A number formatted with `spec`, or MISSING."""
    if x is None or x == "" or (isinstance(x, float) and not math.isfinite(x)):
        return MISSING
    return format(x, spec)


def value(v) -> str:
    """A grid or recipe value: strings as they are ("" stays empty), anything else as JSON."""
    return v if isinstance(v, str) else json.dumps(v)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table, ending with the blank line that closes it."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(r) + " |" for r in rows], ""]
