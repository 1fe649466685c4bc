"""The embedded demo, shortened to 2 steps per stage: every arm through the real launcher from the
committed base model, the comparison report with paired differences, a second run that skips the
finished stages, and `--from-scratch` (the base trained again; arms of another base trained again)."""

from __future__ import annotations

import re

import pytest
import yaml

from lsa_ds import demo
from tests.launch import lsa, sets

pytestmark = pytest.mark.deepspeed

ARMS = ("tiny-cpu-extended", "tiny-cpu-extended-lsa", "tiny-cpu-extended-alpha0", "tiny-cpu-more-steps")
SHORT = ("train.max_steps=2", "eval.windows=2", "eval.every_steps=null")


def _config(runs, stage: str) -> dict:
    return yaml.safe_load((runs / stage / "config.yaml").read_text())


def test_demo_arms_from_the_committed_base_smoke_and_rerun_skips(tmp_path):
    short = sets(f"run.output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", *SHORT)
    first = lsa("demo", *short, check=False, timeout=1200)
    out = first.stdout + first.stderr
    # exit 0: nothing FAILed (the committed base learned); two steps may MISS the context-use aim
    assert first.returncode == 0, out[-4000:]
    assert re.search(r"PASS base learned: loss @128 = \d\.\d{3} < 0\.6·ln\(V\) = 3\.743", out), out[-4000:]
    for arm in ("extended", "extended-lsa", "extended-alpha0"):
        assert re.search(rf"(PASS|MISS) {arm} uses context: on stdlib-repeats held-out data", out), arm
    assert re.search(r"NOTE alignment \(alpha 0\.1\) vs baseline: loss @512 on stdlib-repeats [+-]\d", out)
    assert "FAIL" not in out
    assert "committed base model" in out and not (tmp_path / "runs" / "tiny-cpu-base").exists()
    for stage in ARMS:
        assert (tmp_path / "runs" / stage / "hf" / "config.json").is_file(), out[-4000:]
    # the arms continue from the committed base, read text with its tokenizer, and differ only where they should
    cfg = {s: _config(tmp_path / "runs", s) for s in ARMS}
    base = demo.COMMITTED_BASE
    assert all(cfg[s]["model"]["init_from"] == str(base) for s in ARMS)
    assert all(cfg[s]["data"]["tokenizer"]["path"] == str(base / "hf" / "tokenizer.model") for s in ARMS)
    align = {s: (cfg[s]["align"]["enabled"], cfg[s]["align"]["alpha"]) for s in ARMS[:3]}
    assert align == {"tiny-cpu-extended": (False, 0.1), "tiny-cpu-extended-lsa": (True, 0.1),
                     "tiny-cpu-extended-alpha0": (True, 0.0)}
    assert cfg["tiny-cpu-more-steps"]["train"]["seq_len"] == 128 and cfg["tiny-cpu-extended"]["train"]["seq_len"] == 512
    assert cfg["tiny-cpu-more-steps"]["model"]["rope"]["type"] == "none"
    assert "held-out loss" in out and "@512" in out and "stdlib-repeats" in out  # natural text and the mixture, apart
    assert "uses context" in out and "more steps" in out and "alignment (alpha 0.1) vs baseline" in out
    assert "both views, alpha 0 vs baseline" in out
    report = (tmp_path / "runs" / "demo-eval" / "report.md").read_text()
    assert all(s in report for s in ("tiny-cpu-base", *ARMS)) and "## Paired differences against tiny-cpu-extended" in report
    assert "## The demo's verdict" in report and "entropy" in report
    assert report.startswith("Held-out data of this report: `stdlib-repeats`")  # the mixture's held-out part
    assert "tiny-cpu-extended-alpha0" in (tmp_path / "runs" / "demo-eval" / "stdlib" / "report.md").read_text()
    assert (tmp_path / "runs" / "demo-eval" / "perplexity_vs_length.png").stat().st_size > 0
    again = lsa("demo", *short, "--no-eval", check=False)
    assert again.stdout.count("already complete") == 4 and "committed base model" in again.stdout, again.stdout


def test_from_scratch_trains_the_base_and_retrains_arms_of_another_base(tmp_path, capsys):
    runs = tmp_path / "runs"
    short = [f"run.output_dir={runs}", f"data.cache_dir={tmp_path / 'cache'}", *SHORT]
    two = demo.STAGES[:2]  # the base and the baseline arm
    got = demo.run_stages(short, 2, two, from_scratch=True)
    assert [(name, path) for name, path, _ in got] == [("base", runs / "tiny-cpu-base"), ("extended", runs / "tiny-cpu-extended")]
    assert got[0][2] == 512 and (runs / "tiny-cpu-base" / "hf" / "tokenizer.model").is_file()
    assert _config(runs, "tiny-cpu-extended")["model"]["init_from"] == str(runs / "tiny-cpu-base")
    capsys.readouterr()
    # without --from-scratch the arm's base is the committed one: the finished arm is trained again
    demo.run_stages(short, 2, two)
    out = capsys.readouterr().out
    assert "(its recipe changed: data.tokenizer.path)" in out, out  # the first key that differs
    assert _config(runs, "tiny-cpu-extended")["model"]["init_from"] == str(demo.COMMITTED_BASE)
