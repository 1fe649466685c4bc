"""Shared fixtures: a small prepared stdlib corpus, built once per test session."""

from __future__ import annotations

import pytest

from lsa_ds.recipe import load_recipe

SMALL_DATA = [
    "data.sources=[{name: stdlib, type: stdlib, max_documents: 160, holdout: 0.1, exclude: ['test/*', 'idlelib/*']}]",
    "data.tokenizer.vocab_size=512",
    "data.tokenizer.train_chars=200000",
]


def small_recipe(cache_dir, *extra: str):
    """A recipe over a small slice of the stdlib corpus with a fast-to-train tokenizer."""
    return load_recipe(None, [*SMALL_DATA, f"data.cache_dir={cache_dir}", "train.seq_len=64", *extra])


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="session")
def prepared(data_cache_dir):
    """(recipe, TokenCache) for the small corpus, prepared once."""
    from lsa_ds.data import open_cache, prepare

    recipe = small_recipe(data_cache_dir)
    prepare(recipe.data, progress=False)
    return recipe, open_cache(recipe.data)
