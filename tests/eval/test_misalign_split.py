"""The overlap misalignment split by predicted-token class (lsa_ds/eval/misalign_split.py): the
classes partition the pairs and add up to the unsplit metric, a model that copies only what it
sees disagrees exactly on the `cut` class, and a tiny LLaMA runs through it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lsa_ds.eval.misalign_split import CLASSES, measure_misalign_split, pair_classes
from lsa_ds.eval.misalignment import draw_overlap_shift, measure_misalignment
from lsa_ds.eval.repeat_docs import labelled_windows
from tests.eval.test_copy_retrieval import V, synthetic_docs

L = 48


@pytest.fixture(scope="module")
def windows():
    """[N, L + 1] windows of labelled documents whose 128-token segments reach past a window."""
    return labelled_windows(synthetic_docs(10, 500), L + 1, 24)


def test_windows_label_copies_by_their_distance(windows):
    w, dist = windows
    assert w.shape == dist.shape == (24, L + 1) and (dist > 0).sum() > 100
    i, t = np.nonzero(dist)
    src = t - dist[i, t]
    inside = src >= 0  # the others copy a token before the window
    assert (w[i, t][inside] == w[i[inside], src[inside]]).all() and (~inside).any()


def test_pair_classes_follow_the_predicted_tokens_source():
    # window of L = 10 with E = 3; pairs t = 3..9 predict tokens 4..10
    dist = np.zeros(11, dtype=np.int64)
    dist[4], dist[5], dist[6], dist[9] = 2, 5, 7, 4  # sources 2 (cut), 0 (cut), -1 (unseen), 5 (shared)
    dist[10] = 7                                     # source 3 = E: both views see it
    got = [CLASSES[c] for c in pair_classes(dist, 10, 3)]
    assert got == ["cut", "cut", "unseen", "plain", "plain", "shared", "shared"]


def _window_logits(windows: np.ndarray, dist: np.ndarray, seed: int):
    """A LogitsFn that copies what it sees: at window position q it predicts token q + 1 sharply
    (logit 8) from its source when that source is inside the row, and is uniform otherwise (plain
    text, or a source outside the row). Rows are recognised as the long or short view of a window."""
    rows = {}
    for i, w in enumerate(windows):
        e = draw_overlap_shift(seed, i, L)
        rows[w[:L].tobytes()] = (i, 0)
        rows[np.concatenate([w[e:L], np.zeros(e, dtype=w.dtype)]).tobytes()] = (i, e)

    def logits_fn(ids: torch.Tensor, keep: int) -> torch.Tensor:
        assert keep == ids.shape[1] == L
        out = torch.zeros(ids.shape[0], L, V)
        for r in range(ids.shape[0]):
            i, off = rows[ids[r].numpy().tobytes()]
            for p in range(L - off):
                q = off + p
                d = dist[i, q + 1]
                if d and q + 1 - d >= off:
                    out[r, p, windows[i, q + 1 - d]] = 8.0
        return out

    return logits_fn


def test_a_model_that_copies_what_it_sees_disagrees_only_on_cut_copies(windows):
    w, dist = windows
    split = measure_misalign_split(_window_logits(w, dist, seed=5), w, dist, L, seed=5, n_boot=300)
    by = {c.name: c for c in split.classes}
    assert all(by[c].pairs > 0 for c in CLASSES)
    assert by["cut"].skl.value > 1.0 and by["cut"].skl.lo > 1.0
    for name in ("shared", "unseen", "plain"):  # the same prediction from both views
        assert by[name].skl.value == pytest.approx(0.0, abs=1e-6) and by[name].skl.lo >= 0.0
    assert by["plain"].sce.value == pytest.approx(2 * math.log(V), rel=1e-6)  # uniform: 2 x entropy


def test_classes_partition_the_pairs_and_add_up_to_the_unsplit_metric(windows):
    from transformers import LlamaConfig, LlamaForCausalLM

    w, dist = windows
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64,
                                         max_position_embeddings=64)).eval()
    split = measure_misalign_split(model, w, dist, L, seed=3, batch_tokens=6 * L, n_boot=200)
    shifts = [draw_overlap_shift(3, i, L) for i in range(len(w))]
    assert sum(c.pairs for c in split.classes) == sum(L - e for e in shifts)
    assert sum(c.share for c in split.classes) == pytest.approx(1.0)
    from lsa_ds.eval.forward import hf_logits_fn

    unsplit = measure_misalignment(hf_logits_fn(model), w, L, "overlap", samples=len(w), seed=3)
    for metric in ("sce", "skl"):
        combined = sum(c.share * getattr(c, metric).value for c in split.classes if c.pairs)
        assert combined == pytest.approx(getattr(unsplit, metric).mean, rel=1e-6)
        assert getattr(split, metric) == pytest.approx(getattr(unsplit, metric).mean, rel=1e-6)
        assert split.per_window["cut"].shape == (len(w), 3)
    for c in split.classes:
        assert c.skl.lo >= 0.0 and c.sce.lo <= c.sce.value <= c.sce.hi and c.windows <= len(w)
    assert "cut" in split.text() and split.to_dict()["classes"][0]["name"] == "cut"
