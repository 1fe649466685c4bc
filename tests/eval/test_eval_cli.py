"""`lsa eval` end to end on tiny models: reports and plots written, runs and plain model folders,
--compare with the correlation analysis, benchmarks, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lsa_ds import cli

FIXTURES = Path(__file__).parent / "fixtures"
FAST = ["--lengths", "32,64,128", "--windows", "4", "--misalign-samples", "6", "--passkey-lengths", "300",
        "--passkey-depths", "0,1", "--passkey-samples", "1", "--passkey-new-tokens", "6", "--no-progress"]
PNG = b"\x89PNG\r\n\x1a\n"


def _lsa_eval(*args: str) -> int:
    return cli.main(["eval", *map(str, args)])


def _check_outputs(out: Path, plots: set[str]) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").stat().st_size > 500
    assert set(report["plots"]) == plots
    for name in plots:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    return report


def test_a_model_folder_gets_every_metric_and_a_report(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert _lsa_eval(model_dir, "--out", out, *FAST, "--longbench", FIXTURES / "longbench" / "hotpotqa.jsonl",
                     "--babilong", FIXTURES / "babilong", "--bench-max-examples", "1") == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    report = _check_outputs(out, {"perplexity_vs_length.png", "passkey.png", "misalignment.png"})
    (m,) = report["models"]
    assert m["kind"] == "model" and m["train_len"] == 64 and "stdlib" in m["heldout"]
    ppl = m["perplexity"]
    assert [p["length"] for p in ppl["lengths"]] == [32, 64, 128] and ppl["score_tokens"] == 16 and ppl["windows"] == 4
    assert all(p["ppl_ci"][0] <= p["ppl"] <= p["ppl_ci"][1] for p in ppl["lengths"])
    assert set(m["misalignment"]) == {"last", "overlap"} and m["misalignment"]["last"]["samples"] == 6
    assert m["passkey"]["lengths"] == [300] and len(m["passkey"]["accuracy"][0]) == 2
    assert set(m["longbench"]["tasks"]) == {"hotpotqa"} and m["longbench"]["tasks"]["hotpotqa"]["n"] == 1
    assert set(m["babilong"]["tasks"]) == {"qa1", "qa5", "qa8"} and len(m["babilong"]["predictions"]) == 3
    md = (out / "report.md").read_text()
    for heading in ("## Perplexity versus context length", "## Long-short misalignment", "## Passkey retrieval",
                    "## LongBench", "## BABILong"):
        assert heading in md


def test_a_run_writes_into_its_own_eval_folder_from_its_token_cache(runs_dir):
    run = runs_dir / "run-a"
    assert _lsa_eval(run, *FAST, "--tasks", "ppl,misalign", "--misalign-variants", "last") == 0
    report = _check_outputs(run / "eval", {"perplexity_vs_length.png", "misalignment.png"})
    (m,) = report["models"]
    assert m["kind"] == "run" and m["train_len"] == 64 and m["train_loss"] == 4.5 and "token cache" in m["heldout"]
    assert "passkey" not in m and list(m["misalignment"]) == ["last"]


def test_compare_puts_models_side_by_side_and_correlates_four(runs_dir, tmp_path):
    out = tmp_path / "compare"
    runs = [runs_dir / n for n in ("run-a", "run-b", "run-c", "run-d")]
    assert _lsa_eval("--compare", *runs, "--out", out, *FAST, "--tasks", "ppl,misalign",
                     "--misalign-variants", "last") == 0
    report = _check_outputs(out, {"perplexity_vs_length.png", "loss_difference_vs_length.png", "misalignment.png",
                                  "correlation.png"})
    assert [m["name"] for m in report["models"]] == ["run-a", "run-b", "run-c", "run-d"]
    corr = report["correlation"]
    assert corr["length"] == 128
    by_name = {p["predictor"]: p for p in corr["predictors"]}
    for name in ("misalignment (SCE)", "final training loss"):
        assert by_name[name]["n"] == 4 and -1 <= by_name[name]["pearson"] <= 1 and -1 <= by_name[name]["spearman"] <= 1
    final = [json.loads((r / "metrics.jsonl").read_text().splitlines()[-2])["loss"] for r in runs]  # last train row
    assert sorted(p[0] for p in by_name["final training loss"]["points"]) == sorted(final)
    md = (out / "report.md").read_text()
    assert "| run-a |" in md and "| run-d |" in md and "Pearson r" in md
    # every other run against the first, window by window on the very same windows
    pair = report["paired"]
    assert pair["baseline"] == "run-a" and [m["name"] for m in pair["models"]] == ["run-b", "run-c", "run-d"]
    for m in pair["models"]:
        by_metric = {r["metric"]: r for r in m["rows"]}
        assert {"loss@32", "loss@128", "misalign SKL (last)", "entropy (last)"} <= set(by_metric)
        ent = {x["name"]: x["misalignment"]["last"]["entropy"]["mean"] for x in report["models"]}
        assert by_metric["entropy (last)"]["diff"]["mean"] == pytest.approx(ent[m["name"]] - ent["run-a"], abs=1e-9)
        r = by_metric["loss@64"]
        b_len = {p["length"]: p for p in report["models"][0]["perplexity"]["lengths"]}
        m_len = {p["length"]: p for p in next(x for x in report["models"] if x["name"] == m["name"])["perplexity"]["lengths"]}
        assert r["diff"]["mean"] == pytest.approx(m_len[64]["nll"] - b_len[64]["nll"], abs=1e-9)
        assert r["better"] + r["worse"] <= 4 and 0 < r["p_sign"] <= 1
    assert "## Paired differences against run-a" in md


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line_and_exit_2(model_dir, runs_dir, tmp_path, capsys):
    assert _lsa_eval(tmp_path / "nope", "--out", tmp_path / "o") == 2
    assert "no such run or model folder" in _err(capsys)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    assert _lsa_eval(tmp_path / "empty", "--out", tmp_path / "o") == 2
    assert "not a Hugging Face model folder" in _err(capsys)
    assert _lsa_eval(model_dir) == 2
    assert "--out DIR is required" in _err(capsys)
    assert _lsa_eval("--compare", runs_dir / "run-a", model_dir) == 2
    assert "--out DIR is required when comparing" in _err(capsys)
    assert _lsa_eval(model_dir, "--out", tmp_path / "o", "--tasks", "ppl,bogus") == 2
    assert "unknown bogus" in _err(capsys)
    assert _lsa_eval(model_dir, "--out", tmp_path / "o", "--lengths", "32,abc") == 2
    assert "comma-separated numbers" in _err(capsys)


def test_a_run_without_its_token_cache_says_how_to_prepare_it(runs_dir, tmp_path, capsys):
    run = tmp_path / "moved-run"
    shutil.copytree(runs_dir / "run-a", run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["cache_dir"] = str(tmp_path / "empty-cache")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert _lsa_eval(run, *FAST, "--tasks", "ppl") == 2
    line = _err(capsys)
    assert "lsa prepare" in line and str(run / "config.yaml") in line


def test_a_run_whose_tokenizer_is_not_its_caches_is_refused(runs_dir, spm_blob, tmp_path, capsys):
    run = tmp_path / "swapped"
    shutil.copytree(runs_dir / "run-a", run)
    (run / "hf" / "tokenizer.model").write_bytes(spm_blob)  # another SentencePiece model
    assert _lsa_eval(run, *FAST, "--tasks", "ppl") == 2
    assert "not the tokenizer of the run's token cache" in _err(capsys)


def test_a_model_with_a_hugging_face_tokenizer_is_evaluated_with_it(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = [("The grass is green. The sky is blue. " * 20) + f"line {i} of some text about keys." for i in range(50)]
    bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    folder = tmp_path / "hf-tok-model"
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    out = tmp_path / "out"
    assert cli.main(["eval", str(folder), "--out", str(out), "--tasks", "ppl,misalign", "--lengths", "16,32",
                     "--windows", "2", "--misalign-samples", "3", "--misalign-variants", "last", "--no-progress"]) == 0
    (m,) = json.loads((out / "report.json").read_text())["models"]
    assert m["tokenizer"]["kind"] == "hf" and m["tokenizer"]["vocab_size"] == len(tok) and m["train_len"] == 32
    assert [p["length"] for p in m["perplexity"]["lengths"]] == [16, 32]
