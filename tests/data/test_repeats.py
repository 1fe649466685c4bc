"""Repeated spans (`data.sources[].repeat`): what they do to a document, deterministically, and
through `lsa prepare`: counted in the summary, held-out split disjoint, vocabulary unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lsa_ds import cli
from lsa_ds.data import open_cache, prepare
from lsa_ds.data.repeats import repeat_layout, repeat_spans
from lsa_ds.errors import UserError
from lsa_ds.recipe import load_recipe
from lsa_ds.recipe.schema import RepeatConfig
from tests.conftest import SMALL_DATA

ORDINARY = np.arange(300, 900)


def _doc(n: int, seed: int = 0) -> list[int]:
    return [1, *np.random.default_rng(seed).integers(1000, 60000, size=n - 2).tolist(), 2]


def _repeats_in(seg: list[int], n: int) -> bool:
    """Some n-gram occurs twice in `seg` (random ids: only a copy makes one)."""
    grams = [tuple(seg[i:i + n]) for i in range(len(seg) - n + 1)]
    return len(set(grams)) < len(grams)


@pytest.mark.parametrize("content", ["natural", "random"])
def test_every_segment_gets_one_copied_span_and_framing_stays(content):
    cfg = RepeatConfig(segment_tokens=64, span_min=8, span_max=16, content=content)
    ids = _doc(64 * 5 + 10)
    out, spans, copied = repeat_spans(ids, "pkg/mod.py", cfg, ORDINARY)
    assert len(out) == len(ids) and out[0] == 1 and out[-1] == 2
    assert spans == 5 and 8 * 5 <= copied <= 16 * 5  # the 8-token tail (< 2 spans) is left alone
    for s in range(5):
        seg = out[1 + 64 * s: 1 + 64 * (s + 1)]
        assert _repeats_in(seg, 8), s
    changed = sum(a != b for a, b in zip(ids, out))
    assert changed <= copied * (2 if content == "random" else 1)
    if content == "random":  # the first occurrences were redrawn from the ordinary vocabulary
        assert sum(1 for t in out if 300 <= t < 900) >= copied
    again, *_ = repeat_spans(ids, "pkg/mod.py", cfg, ORDINARY)
    other, *_ = repeat_spans(ids, "pkg/other.py", cfg, ORDINARY)
    assert again == out and other != out  # keyed by the document, the same on every machine


def _copies(orig: list[int], out: list[int], n: int) -> list[tuple[int, int]]:
    """(source start, copy start) of every n-token run of `out` that changed from `orig` and equals
    an earlier n-gram of `out` (random ids: only a copy makes one)."""
    found = []
    for b in range(len(out) - n + 1):
        if out[b:b + n] != orig[b:b + n] and (b == 0 or out[b - 1] == orig[b - 1]):
            for a in range(b - n + 1):
                if out[a:a + n] == out[b:b + n]:
                    found.append((a, b))
                    break
    return found


@pytest.mark.parametrize("content", ["natural", "random"])
def test_several_spans_per_segment_land_one_per_part_and_reach_back_across_the_segment(content):
    one = RepeatConfig(segment_tokens=128, span_min=8, span_max=8, content=content)
    ids = _doc(128 * 40 + 2)
    assert repeat_spans(ids, "k", one, ORDINARY)[0] == repeat_spans(ids, "k", one.model_copy(update={"per_segment": 1}),
                                                                     ORDINARY)[0]
    cfg = RepeatConfig(segment_tokens=128, span_min=8, span_max=8, per_segment=4, content=content)
    out, spans, copied = repeat_spans(ids, "k", cfg, ORDINARY)
    assert spans == 4 * 40 and copied == 8 * spans and out[0] == 1 and out[-1] == 2
    far = twice = 0
    for s in range(40):  # each copy sits in its own quarter, exact, with its source before it in the segment
        lo = 1 + 128 * s
        seg, orig = out[lo:lo + 128], ids[lo:lo + 128]
        if content == "random":  # the sources changed too: count the 8-grams that occur twice (a copy
            grams = [tuple(seg[i:i + 8]) for i in range(121)]  # may land on a later span's source: then 3)
            twice += sum(grams.count(g) > 1 for g in set(grams))
            continue
        pairs = _copies(orig, seg, 8)
        parts = sorted({b // 32 for _, b in pairs})
        assert parts == [0, 1, 2, 3], (s, pairs)
        far += any(b - a >= 64 for a, b in pairs)
    assert twice >= 4 * 40 * 0.9 if content == "random" else far >= 20  # distances are drawn over the whole segment, not within a part


def test_random_spans_from_a_small_alphabet_several_per_segment_stay_exact_copies():
    cfg = RepeatConfig(segment_tokens=128, span_min=8, span_max=12, per_segment=4, content="random", alphabet=16)
    ids = _doc(128 * 20 + 2)
    out, spans, copied = repeat_spans(ids, "k", cfg, ORDINARY)
    alphabet = set(np.random.default_rng(0).permutation(ORDINARY)[:16].tolist())
    assert spans == 80 and len({t for t in out if 300 <= t < 900}) <= 16 <= len(set(out) & alphabet)
    assert sum(t in alphabet for t in out) >= copied  # every copied token (and its source) is from the alphabet
    assert repeat_spans(ids, "k", cfg, ORDINARY)[0] == out


LAYOUT_CONFIGS = [  # (config, sha256[:16] of 30 documents' tokens and counts from repeat_spans before
    # repeat_layout existed: the tokens existing token caches hold must not change)
    (dict(segment_tokens=64, span_min=8, span_max=16), "87580d31a488da07"),
    (dict(segment_tokens=64, span_min=8, span_max=16, content="random"), "3048660127c00ab0"),
    (dict(segment_tokens=128, span_min=8, span_max=12, per_segment=4, content="random", alphabet=16),
     "91aa9764c527da43"),
    (dict(segment_tokens=128, per_segment=2, span_min=16, span_max=32, content="random", alphabet=16),
     "c7a6176ac49372ae"),
    (dict(segment_tokens=512, per_segment=8, span_min=16, span_max=32, content="random", alphabet=16),
     "ba4833bdf7a7c625"),
    (dict(segment_tokens=256, per_segment=3, span_min=5, span_max=40, seed=7), "235f2e33317c508d"),
]


@pytest.mark.parametrize("config,digest", LAYOUT_CONFIGS)
def test_layout_keeps_the_tokens_and_labels_every_copy_with_its_source(config, digest):
    cfg = RepeatConfig(**config)
    h = hashlib.sha256()
    for k in range(30):
        n = int(np.random.default_rng(k).integers(3, 1500))
        ids = [1, *np.random.default_rng(k).integers(1000, 60000, size=n - 2).tolist(), 2]
        out, spans, copied = repeat_spans(ids, f"doc/{k}.py", cfg, ORDINARY)
        tokens, layout, source_of = repeat_layout(ids, f"doc/{k}.py", cfg, ORDINARY)
        assert tokens == out and len(layout) == spans and source_of.shape == (n,)
        h.update(np.asarray(out, dtype=np.int64).tobytes())
        h.update(f"{spans},{copied};".encode())
        toks, pos = np.asarray(tokens), np.flatnonzero(source_of >= 0)
        assert (toks[pos] == toks[source_of[pos]]).all() and (source_of[pos] < pos).all()
        assert len(pos) == copied  # copies never overlap one another, so every copied token keeps its label
        for a, b, m in layout:  # each span row is what the labels say: its copy points at its source
            assert a + m <= b and (source_of[b:b + m] == np.arange(a, a + m)).all()
        changed = np.flatnonzero(toks != np.asarray(ids))
        if cfg.content == "natural":  # random ids: a changed token can only be a copy
            assert set(changed.tolist()) <= set(pos.tolist())
        else:  # ... or a redrawn source
            sources = {int(a) + i for a, _, m in layout for i in range(m)}
            assert set(changed.tolist()) <= set(pos.tolist()) | sources
    assert h.hexdigest()[:16] == digest


def test_impossible_span_lengths_are_refused():
    with pytest.raises(ValueError, match="two spans"):
        RepeatConfig(segment_tokens=16, span_min=9, span_max=9)
    with pytest.raises(ValueError, match="per_segment=4"):
        RepeatConfig(segment_tokens=64, span_min=9, span_max=9, per_segment=4)
    with pytest.raises(ValueError, match="needs content: random"):
        RepeatConfig(segment_tokens=256, span_min=8, span_max=9, alphabet=16)


def test_prepare_counts_repeats_keeps_the_split_and_the_vocabulary(tmp_path, capsys, data_cache_dir, prepared):
    natural = SMALL_DATA[0].removeprefix("data.sources=[").removesuffix("]")
    repeated = natural.replace("name: stdlib", "name: copies").removesuffix("}") + \
        ", repeat: {segment_tokens: 128, span_min: 8, span_max: 24}}"
    mixed = [f"data.sources=[{natural}, {repeated}]", *SMALL_DATA[1:], f"data.cache_dir={data_cache_dir}"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    assert cli.main(["prepare", str(recipe), *[a for s in mixed for a in ("--set", s)], "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "repeated spans" in out and "tokens, " in out  # the summary shows the task shaping
    r = load_recipe(recipe, mixed)
    cache = open_cache(r.data)
    _, plain = prepared
    assert cache.tokenizer.fingerprint == plain.tokenizer.fingerprint  # adding the source kept the vocabulary
    rep = cache.manifest["sources"]["copies"]["repeated"]
    assert rep["spans"] > 100 and rep["tokens"] >= 8 * rep["spans"]
    assert "repeated" in cache.manifest["sources"]["stdlib"] and cache.manifest["sources"]["stdlib"]["repeated"]["spans"] == 0
    for split in ("train", "eval"):  # the same documents (split by key) with spans repeated
        a, b = cache.store("stdlib", split), cache.store("copies", split)
        assert a.num_docs == b.num_docs > 0 and list(a.lengths) == list(b.lengths)
        assert any((a.tokens(d) != b.tokens(d)).any() for d in range(a.num_docs))
    assert prepare(r.data, progress=False)[1] is None  # deterministic: the second prepare finds it
    # held-out text read in memory (an export's lsa_data.json, lsa eval --data) gets the same spans
    from lsa_ds.eval.heldout import cache_windows, text_windows

    copies = r.model_copy(deep=True)
    copies.data.sources = [s for s in r.data.sources if s.name == "copies"]
    np.testing.assert_array_equal(text_windows(copies.data, cache.tokenizer, 64, 8), cache_windows(copies, cache, 64, 8))
    with pytest.raises(UserError, match="span_min"):
        load_recipe(recipe, [*mixed[:-1], mixed[0].replace("span_min: 8", "span_min: 80")])
