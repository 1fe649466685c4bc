"""The tiny causal regressor: shapes, causality, rotary relativity, positional encodings."""

import pytest
import torch

from lsa_ds.synthetic import tasks
from lsa_ds.synthetic.model import POSITIONAL_ENCODINGS, TinyRegressor, apply_rope, rope_tables


def _model(pe: str) -> TinyRegressor:
    torch.manual_seed(0)
    return TinyRegressor(tasks.VOCAB_SIZE, max_seq_len=51, pe=pe, d_model=16, n_layers=2, n_heads=2).eval()


@pytest.mark.parametrize("pe", POSITIONAL_ENCODINGS)
def test_one_output_per_example_read_at_its_last_token(pe):
    model = _model(pe)
    lengths = torch.tensor([1, 5, 50])
    tokens = tasks.sample_tokens(lengths, torch.Generator().manual_seed(0))
    out = model(tokens, readout=lengths)
    assert out.shape == (3,) and torch.isfinite(out).all()
    # Causal: what follows the readout (padding, or anything else) cannot change the prediction.
    scrambled = tokens.clone()
    scrambled[0, 2:] = 1
    torch.testing.assert_close(model(scrambled, readout=lengths)[0], out[0])
    # And the prediction of a short row does not depend on the batch's padded width.
    torch.testing.assert_close(model(tokens[:1, :2], readout=lengths[:1]), out[:1], rtol=1e-5, atol=1e-6)


def test_learned_table_is_sized_for_test_lengths():
    model = _model("learned")
    assert model.position_table is not None and model.position_table.num_embeddings == 51
    assert _model("nope").position_table is None and _model("rope").position_table is None


def test_nope_sees_only_the_causal_mask():
    # Without positions, every prefix of a constant row attends over identical values, so the
    # model cannot tell position 1 from position 5: the output is the same at every readout.
    model = _model("nope")
    tokens = torch.full((1, 6), 1)
    outs = [model(tokens, readout=torch.tensor([i])).item() for i in range(6)]
    assert max(outs) - min(outs) < 1e-5


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(16, 8)
    q, k = torch.randn(8), torch.randn(8)
    score = lambda i, j: (apply_rope(q, cos[i], sin[i]) * apply_rope(k, cos[j], sin[j])).sum()  # noqa: E731
    torch.testing.assert_close(score(9, 3), score(7, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(score(0, 0), (q * k).sum())


def test_too_long_input_and_unknown_pe_are_refused():
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 51"):
        _model("rope")(torch.zeros(1, 52, dtype=torch.long), readout=torch.tensor([51]))
    with pytest.raises(ValueError, match="unknown positional encoding"):
        TinyRegressor(tasks.VOCAB_SIZE, 8, pe="alibi")  # type: ignore[arg-type]
