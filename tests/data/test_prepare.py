"""Tokenizer and token cache: lossless round trip, counts, caching, atomicity, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lsa_ds import cli
from lsa_ds.data import open_cache, prepare
from lsa_ds.data.shards import MANIFEST, token_dtype
from lsa_ds.data.sources import iter_records
from lsa_ds.errors import UserError
from lsa_ds.recipe import load_recipe
from tests.conftest import small_recipe


def test_roundtrip_and_framing_on_stdlib_sample(prepared):
    recipe, cache = prepared
    tok = cache.tokenizer
    docs = [r.text for split, r in iter_records(recipe.data.sources[0]) if r.text][:40]
    for doc, ids in zip(docs, tok.encode_documents(docs)):
        assert ids[0] == tok.bos_id and ids[1] != tok.bos_id and ids[-1] == tok.eos_id
        assert tok.decode(ids[1:-1]) == doc
    tricky = "tabs\tand  spaces \n\n\r\n unicode: héllo wörld ∑ 🙂 \x00 end  "
    assert tok.decode(tok.encode_raw([tricky])[0]) == tricky


def test_shards_hold_exactly_the_source_documents(prepared):
    recipe, cache = prepared
    tok = cache.tokenizer
    src = recipe.data.sources[0]
    expected = {"train": [], "eval": []}
    for split, rec in iter_records(src):
        if rec.text is not None:
            expected[split].append(rec.text)
    info = cache.manifest["sources"]["stdlib"]
    assert cache.manifest["dtype"] == "uint16"
    for split in ("train", "eval"):
        store = cache.store("stdlib", split)
        assert store.num_docs == len(expected[split]) == info["splits"][split]["documents"]
        assert store.num_tokens == info["splits"][split]["tokens"]
        for d in (0, store.num_docs // 2, store.num_docs - 1):
            assert tok.decode(store.tokens(d)[1:-1].tolist()) == expected[split][d]
    assert len(expected["eval"]) > 0 and info["records"] >= 160


def test_second_prepare_is_up_to_date_and_changes_make_a_new_cache(prepared, data_cache_dir):
    recipe, cache = prepared
    folder, reports = prepare(recipe.data, progress=False)
    assert reports is None and folder == cache.folder
    changed = small_recipe(data_cache_dir, "data.tokenizer.add_eos=false").data
    folder2, reports2 = prepare(changed, progress=False)
    assert reports2 is not None and folder2 != cache.folder
    assert open_cache(changed).store("stdlib", "train").tokens(0)[-1] != cache.tokenizer.eos_id


def test_cli_prepare_says_up_to_date(prepared, data_cache_dir, tmp_path, capsys):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(json.dumps(small_recipe(data_cache_dir).model_dump(mode="json")))
    assert cli.main(["prepare", str(recipe_file), "--quiet"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_shards_roll_over_and_read_back(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"document number {i} " * (i % 7 + 1)}) for i in range(60)))
    recipe = small_recipe(tmp_path / "c", f"data.sources=[{{name: j, type: jsonl, path: '{f}'}}]",
                          "data.tokenizer.vocab_size=300", "data.tokenizer.train_chars=10000")
    folder, _ = prepare(recipe.data, progress=False, shard_tokens=200)
    cache = open_cache(recipe.data)
    shards = cache.manifest["sources"]["j"]["splits"]["train"]["shards"]
    assert len(shards) > 3
    store = cache.store("j", "train")
    texts = [r.text for _, r in iter_records(recipe.data.sources[0])]
    assert [cache.tokenizer.decode(store.tokens(d)[1:-1].tolist()) for d in range(store.num_docs)] == texts


def test_killed_prepare_leaves_no_complete_cache(tmp_path):
    """SIGKILL in the middle of tokenizing: nothing looks complete, and a rerun finishes."""
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"data: {{cache_dir: '{tmp_path / 'c'}', tokenizer: {{vocab_size: 512, train_chars: 100000}},\n"
                   "       sources: [{name: stdlib, type: stdlib, exclude: ['test/*']}]}\n")
    proc = subprocess.Popen([sys.executable, "-m", "lsa_ds.cli", "prepare", str(cfg), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "c").glob(".tokens-*.tmp-*/stdlib/train-00000.bin")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "prepare finished before it could be killed"
    assert list((tmp_path / "c").glob(".tokens-*.tmp-*"))  # the half-written folder is there ...
    assert not list((tmp_path / "c").glob(f"tokens-*/{MANIFEST}"))  # ... but nothing looks complete
    recipe = load_recipe(cfg)
    with pytest.raises(UserError, match="not prepared"):
        open_cache(recipe.data)
    folder, reports = prepare(recipe.data, progress=False)
    assert reports is not None and open_cache(recipe.data).store("stdlib", "train").num_docs > 100

def test_token_dtype_choice_and_refusal():
    recipe = small_recipe("/tmp/unused")
    assert token_dtype(recipe.data, 32000) == np.uint16
    assert token_dtype(recipe.data, 70000) == np.uint32
    recipe.data.token_dtype = "uint16"
    with pytest.raises(UserError, match="uint16 cannot hold a vocabulary of 70000"):
        token_dtype(recipe.data, 70000)


def _run_cli(capsys, *args):
    code = cli.main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("case", ["missing", "empty", "empty_share", "malformed", "no_field", "tiny_vocab", "bad_key"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    f = tmp_path / "d.jsonl"
    # empty_share: 2 empty texts in 12 records: empty ones count toward max_skip_fraction (0.01), as documented
    lines = {"missing": None, "empty": ["", ""], "empty_share": ['{"text": "x = 1"}'] * 10 + ['{"text": " "}'] * 2,
             "malformed": ['{"text": "ok"}', "{nope", "{nope"] * 3,
             "no_field": ['{"body": "x"}'] * 4, "tiny_vocab": ['{"text": "short text"}'] * 3,
             "bad_key": ['{"text": "x"}']}[case]
    if lines is not None:
        f.write_text("\n".join(json.dumps({"text": line}) if case == "empty" else line for line in lines))
    cfg = tmp_path / "r.yaml"
    extra = "  bogus: 1\n" if case == "bad_key" else ""
    cfg.write_text(f"data:\n  cache_dir: {tmp_path / 'c'}\n{extra}  sources: [{{name: j, type: jsonl, path: '{f}'}}]\n"
                   f"  tokenizer: {{vocab_size: {260 if case == 'tiny_vocab' else 300}, train_chars: 10000}}\n")
    code, err = _run_cli(capsys, "prepare", str(cfg), "--quiet")
    assert code == 2 and "\n" not in err and "Traceback" not in err
    expect = {"missing": "matches no files", "empty": "no documents", "malformed": "records skipped (malformed",
              "empty_share": "2 of 12 records skipped",
              "no_field": "missing field 'text'", "tiny_vocab": "vocab_size=260", "bad_key": "unknown key 'data.bogus'"}[case]
    assert expect in err, err
    assert not list((tmp_path / "c").glob(f"tokens-*/{MANIFEST}")) if (tmp_path / "c").exists() else True
    assert not list((tmp_path / "c").glob(".tokens-*")) if (tmp_path / "c").exists() else True
