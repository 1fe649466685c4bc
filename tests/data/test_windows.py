"""Windows: contents, blend, epochs, rank sharding and exact resume."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from lsa_ds.data import BlendedWindows, SourceWindows, WindowLoader, build_windows
from lsa_ds.errors import UserError


class FakeStore:
    """A SplitStore stand-in over in-memory documents (same interface: lengths, tokens)."""

    def __init__(self, docs: list[list[int]]):
        self.docs = [np.asarray(d, dtype=np.uint16) for d in docs]
        self.lengths = np.array([len(d) for d in docs], dtype=np.int64)
        self.num_docs = len(docs)

    def tokens(self, doc, start=0, stop=None):
        return self.docs[doc][start:stop]


def _docs(n, seed=0, base=0):
    rng = np.random.default_rng(seed)
    return [list(base + 10 * i + np.arange(int(rng.integers(1, 40))) % 10) for i in range(n)]


def test_windows_cut_the_document_stream_exactly():
    store = FakeStore(_docs(50))
    sw = SourceWindows(store, window=17, seed=3)
    stream = np.concatenate([store.docs[d] for d in sw.docs])
    assert sw.num_windows == len(stream) // 17
    for k in range(sw.num_windows):
        np.testing.assert_array_equal(sw.get(k), stream[k * 17:(k + 1) * 17])
    assert sorted(sw.docs.tolist()) == list(range(50))  # shuffled, nothing lost


def test_min_length_and_long_document_upsampling():
    store = FakeStore(_docs(60, seed=1))
    short = store.lengths < 10
    sw = SourceWindows(store, window=8, seed=0, min_doc_tokens=10, long_doc_tokens=30, long_doc_repeat=3)
    counts = np.bincount(sw.docs, minlength=60)
    assert (counts[short] == 0).all()
    assert (counts[store.lengths >= 30] == 3).all()
    assert (counts[(store.lengths >= 10) & (store.lengths < 30)] == 1).all()


def test_too_few_tokens_for_one_window_is_a_user_error():
    with pytest.raises(UserError, match="fewer than one window of 1000 tokens"):
        SourceWindows(FakeStore(_docs(5)), window=1000, seed=0, name="tiny")


def test_blend_proportions_and_epoch_reshuffle():
    a = SourceWindows(FakeStore(_docs(300, seed=2)), window=50, seed=0)
    b = SourceWindows(FakeStore(_docs(300, seed=3, base=1000)), window=50, seed=1)
    blend = BlendedWindows([a, b], [3.0, 1.0], seed=9)
    n = 4000
    src = [blend.locate(i)[0] for i in range(n)]
    assert abs(src.count(0) / n - 0.75) < 0.005
    first_epoch = [blend.locate(i)[2] for i in range(n) if blend.locate(i)[:2] == (1, 0)]
    second_epoch = [blend.locate(i)[2] for i in range(n) if blend.locate(i)[:2] == (1, 1)]
    assert sorted(first_epoch) == list(range(b.num_windows))  # an epoch visits every window once
    assert second_epoch[:20] != first_epoch[:20]  # ... and the next epoch in a new order


def _ids_per_step(loader, steps):
    out = []
    for _ in range(steps):
        out.append([ids for ids, _ in loader.next_step()])
    return out


def test_global_order_does_not_depend_on_world_size():
    blend = BlendedWindows([SourceWindows(FakeStore(_docs(200)), window=6, seed=0)], [1.0], seed=4)
    one = WindowLoader(blend, micro_batch=4, grad_accum=2, rank=0, world=1)
    two = [WindowLoader(blend, micro_batch=2, grad_accum=2, rank=r, world=2) for r in range(2)]
    for _ in range(5):
        solo = sorted(i for ids, _ in one.next_step() for i in ids)
        pair = sorted(i for loader in two for ids, _ in loader.next_step() for i in ids)
        assert solo == pair  # same global batch, whatever the number of ranks


def test_resume_yields_identical_batches(prepared):
    """torchtitan-style: consume N steps on 2 ranks, save state, rebuild, next M steps identical."""
    recipe, cache = prepared
    loaders = [WindowLoader(build_windows(recipe, cache), 2, 2, rank=r, world=2) for r in range(2)]
    for loader in loaders:
        _ids_per_step(loader, 3)
    states = [loader.state_dict() for loader in loaders]
    expected = [[(ids, w.copy()) for _ in range(4) for ids, w in loader.next_step()] for loader in loaders]
    for r in range(2):
        fresh = WindowLoader(build_windows(recipe, cache), 2, 2, rank=r, world=2)
        fresh.load_state_dict(states[r])
        got = [(ids, w) for _ in range(4) for ids, w in fresh.next_step()]
        assert [ids for ids, _ in got] == [ids for ids, _ in expected[r]]
        for (_, w1), (_, w2) in zip(got, expected[r]):
            np.testing.assert_array_equal(w1, w2)
    # across both ranks, every sample of the 7 steps was consumed exactly once
    all_ids = sorted(i for r in range(2) for step in range(7) for ids in loaders[r].sample_ids(step * 8) for i in ids)
    assert all_ids == list(range(56))


_HASH_SNIPPET = """
import hashlib, sys
from lsa_ds.recipe import load_recipe
from lsa_ds.data import build_windows, open_cache
recipe = load_recipe(None, sys.argv[1:])
w = build_windows(recipe, open_cache(recipe.data))
print(hashlib.sha256(b"".join(w[i].tobytes() for i in range(64))).hexdigest())
"""


def test_window_order_is_identical_across_processes(prepared, data_cache_dir):
    from tests.conftest import SMALL_DATA

    recipe, cache = prepared
    w = build_windows(recipe, cache)
    here = hashlib.sha256(b"".join(w[i].tobytes() for i in range(64))).hexdigest()
    args = [*SMALL_DATA, f"data.cache_dir={data_cache_dir}", "train.seq_len=64"]
    there = subprocess.run([sys.executable, "-c", _HASH_SNIPPET, *args], capture_output=True, text=True, check=True)
    assert there.stdout.strip() == here


def test_window_size_follows_the_recipe(prepared):
    recipe, cache = prepared
    w = build_windows(recipe, cache)
    assert len(w[0]) == recipe.window_tokens == 64 + 32 + 1
    ev = build_windows(recipe, cache, "eval")
    assert len(ev[0]) == 97 and ev.sources[0].store is cache.store("stdlib", "eval")
