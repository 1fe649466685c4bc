"""Which held-out data every model of one `lsa eval` reads (docs/design.md, "Evaluation").

A comparison is only worth reading when every row scored the same documents, so one data
config is chosen for all targets and said aloud:

- `--data RECIPE`: that recipe's sources, tokenized with each model's own tokenizer;
- else the data of the first *run* among the targets (a model folder compared with a run is
  scored on the run's held-out split), else the data the first model folder's export recorded
  (lsa_data.json), else the builtin stdlib corpus.

A run whose own data is the chosen one (and no --data) reads its prepared token cache: the very
windows the trainer evaluated. Every other target tokenizes the chosen sources' held-out text
itself; with the run's tokenizer that gives the same windows token for token, with another
tokenizer the same documents in other tokens (the report marks rows by the windows they read and
pairs only identical ones). Pure: nothing is read here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lsa_ds.recipe.schema import DataConfig


def data_key(data: DataConfig) -> str:
    """Identity of the held-out documents a data config yields (its sources and the window
    filter), not of how they are tokenized or cached."""
    return json.dumps({"sources": [s.model_dump(mode="json") for s in data.sources],
                       "min_doc_tokens": data.min_doc_tokens}, sort_keys=True)


@dataclass
class DataChoice:
    """The chosen held-out data and how each target reads it."""

    data: DataConfig
    origin: str
    """Where the choice came from, for people: "--data recipes/x.yaml", "run tiny-cpu-extended", ..."""
    from_cache: set[str] = field(default_factory=set)
    """Names of runs that read their own token cache (their data is the chosen data)."""
    adopted: list[str] = field(default_factory=list)
    """Names of targets whose own data differs from the choice and that are scored on it anyway."""

    def notice(self) -> str | None:
        """The sentence the console and the report carry when a target is scored on other data
        than its own; None when every target reads its own."""
        if not self.adopted:
            return None
        return (f"{', '.join(self.adopted)}: scored on the held-out split of {self.origin}'s data, not their own, so "
                f"that every model reads the same documents (--data RECIPE chooses another)")


def _own_data(target) -> DataConfig | None:
    """A target's own data: a run's recipe data, a folder's recorded data (None: none recorded)."""
    return target.recipe.data if target.recipe is not None else target.data


def choose_data(targets, data_override: DataConfig | None = None, data_path: str | None = None) -> DataChoice:
    """One data config for all `targets` (see the module docstring)."""
    if data_override is not None:
        return DataChoice(data_override, f"--data {data_path}" if data_path else "--data")
    runs = [t for t in targets if t.recipe is not None]
    recorded = [t for t in targets if t.recipe is None and t.data is not None]
    if runs:
        data, origin = runs[0].recipe.data, f"run {runs[0].name}"
    elif recorded:
        data, origin = recorded[0].data, f"model {recorded[0].name} (lsa_data.json)"
    else:
        data, origin = DataConfig(), "the builtin stdlib corpus"
    key = data_key(data)
    choice = DataChoice(data, origin)
    for t in targets:
        own = _own_data(t)
        own_key = data_key(own if own is not None else DataConfig())
        if own_key != key:
            choice.adopted.append(t.name)
        elif t.recipe is not None:
            choice.from_cache.add(t.name)
    return choice
