"""Comparisons that cannot mislead: `lsa eval --compare` scores every model on one held-out data
set and says so, marks rows that read other windows and says why they are not paired, reports
the window count it used, keeps tables whole off a terminal; one tokenizer has one fingerprint
wherever it is saved, and an export carries no machine-local tokenizer keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lsa_ds import cli
from lsa_ds.eval.targets import load_tokenizer

FAST = ["--lengths", "32,64", "--windows", "4", "--misalign-samples", "4", "--misalign-variants", "last",
        "--tasks", "ppl,misalign", "--no-progress"]


def _folder_like_a_download(run: Path, dest: Path) -> Path:
    """The run's weights and tokenizer as a model folder that records no data (no lsa_data.json)."""
    shutil.copytree(run / "hf", dest)
    (dest / "lsa_data.json").unlink(missing_ok=True)
    return dest


def test_a_folder_compared_with_a_run_is_scored_on_the_runs_data_and_paired(runs_dir, tmp_path, capsys):
    folder = _folder_like_a_download(runs_dir / "run-b", tmp_path / "original")
    out = tmp_path / "cmp"
    assert cli.main(["eval", "--compare", str(folder), str(runs_dir / "run-a"), "--out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    folder_m, run_m = report["models"]
    assert "run run-a" in folder_m["heldout"] and "token cache" in run_m["heldout"]
    assert report["data"]["adopted"] == ["original"] and "original: scored on the held-out split of run run-a" \
        in captured.err
    # same tokenizer, same documents: the very windows of the run's token cache, so paired window by window
    assert folder_m["perplexity"]["windows_sha"] == run_m["perplexity"]["windows_sha"]
    rows = {r["metric"] for r in report["paired"]["models"][0]["rows"]}
    assert {"loss@32", "loss@64", "misalign SKL (last)"} <= rows and report["paired"]["models"][0]["not_paired"] == []
    md = (out / "report.md").read_text()
    assert "**Held-out data:** original: scored on" in md and "| windows |" not in md
    # stdout is not a terminal here: the table keeps its natural width (no cut cells, no wrapped rows)
    lines = captured.out.splitlines()
    assert "held-out perplexity, run run-a: the same final tokens at every length, 4 windows" in lines
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == 2 and "…" not in captured.out and all("misalign" not in r for r in rows), captured.out


def test_another_tokenizer_is_marked_and_not_paired_with_the_reason(model_dir, runs_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli.main(["eval", "--compare", str(runs_dir / "run-a"), str(model_dir), "--out", str(out), *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    run_m, folder_m = report["models"]
    assert "run run-a" in folder_m["heldout"]  # the run's documents, in the folder's own tokens
    assert run_m["tokenizer"]["fingerprint"] != folder_m["tokenizer"]["fingerprint"]
    (entry,) = report["paired"]["models"]
    assert entry["rows"] == [] and len(entry["not_paired"]) == 2
    assert all("another tokenizer" in why for why in entry["not_paired"])
    md = (out / "report.md").read_text()
    assert "| model | windows | L |" in md and "not paired:" in md and "nothing is paired" in md
    assert "windows: rows with different letters" in capsys.readouterr().out


def test_a_window_shortfall_is_said_and_reported_everywhere(runs_dir, tmp_path, capsys):
    out = tmp_path / "short"
    assert cli.main(["eval", str(runs_dir / "run-a"), "--out", str(out), "--lengths", "32,1024", "--windows", "400",
                     "--tasks", "ppl", "--no-progress"]) == 0
    captured = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    used = report["models"][0]["perplexity"]["windows"]
    assert 1 <= used < 400
    assert report["settings"]["perplexity"]["windows"] == used and report["settings"]["perplexity"]["windows_asked"] == 400
    assert f"has {used} windows of 1025 tokens, fewer than --windows 400" in captured.err
    assert f"of {used} windows at every length" in (out / "report.md").read_text()
    assert f"{used} windows" in captured.out


def test_one_tokenizer_has_one_fingerprint_wherever_it_is_saved(prepared, tmp_path):
    from lsa_ds.data.tokenizer import load_sentencepiece
    from lsa_ds.train.export import write_tokenizer_and_data

    _, cache = prepared
    spm = cache.tokenizer
    export = tmp_path / "export"
    export.mkdir()
    write_tokenizer_and_data(spm, export, 64)
    hf_only = tmp_path / "hf-only"  # the exported HF files alone, read by AutoTokenizer
    hf_only.mkdir()
    for f in export.iterdir():
        if f.name not in ("tokenizer.model", "lsa_tokenizer.json"):
            shutil.copy(f, hf_only / f.name)
    resaved = tmp_path / "resaved"  # loaded and saved again, as a user's script would
    load_tokenizer(hf_only).impl.save_pretrained(resaved)
    prints = {"cache": spm.fingerprint, "export": load_tokenizer(export).fingerprint,
              "hf": load_tokenizer(hf_only).fingerprint, "resaved": load_tokenizer(resaved).fingerprint,
              "recorded": json.loads((export / "lsa_tokenizer.json").read_text())["fingerprint"]}
    assert len(set(prints.values())) == 1, prints
    assert load_tokenizer(hf_only).kind == "hf" and load_tokenizer(export).kind == "sentencepiece"
    # what changes ids changes the fingerprint: the framing, and another vocabulary
    no_bos = load_sentencepiece(Path(spm.path), add_bos=False, add_eos=spm.add_eos)
    assert no_bos.fingerprint != spm.fingerprint and no_bos.file_digest == spm.file_digest
    # a tokenizer loaded with local_files_only keeps it in init_kwargs; the export leaves it out
    write_tokenizer_and_data(load_tokenizer(resaved), tmp_path / "again", 64)
    config = json.loads((tmp_path / "again" / "tokenizer_config.json").read_text())
    assert not {"local_files_only", "cache_dir", "_commit_hash"} & set(config), config


def test_other_vocabularies_have_other_fingerprints(model_dir, prepared):
    assert load_tokenizer(model_dir).fingerprint != prepared[1].tokenizer.fingerprint
