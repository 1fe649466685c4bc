"""The embedded demo, shortened to 2 steps per stage: every stage and arm through the real launcher,
the comparison report with paired differences, and a second run that skips the finished stages."""

from __future__ import annotations

import pytest

from tests.launch import lsa, sets

pytestmark = pytest.mark.deepspeed


def test_demo_stages_smoke_and_rerun_skips(tmp_path):
    short = sets(f"run.output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=2",
                 "eval.windows=2", "eval.every_steps=null")
    first = lsa("demo", *short, check=False, timeout=1200)
    out = first.stdout + first.stderr
    assert first.returncode in (0, 1), out[-4000:]  # 1: two steps do not keep the demo's promises
    stages = ("tiny-cpu-base", "tiny-cpu-extended", "tiny-cpu-extended-lsa", "tiny-cpu-more-steps")
    for stage in stages:
        assert (tmp_path / "runs" / stage / "hf" / "config.json").is_file(), out[-4000:]
    # the arms continue from the base and differ only where they should
    import yaml

    cfg = {s: yaml.safe_load((tmp_path / "runs" / s / "config.yaml").read_text()) for s in stages}
    assert all(cfg[s]["model"]["init_from"] == str(tmp_path / "runs" / "tiny-cpu-base") for s in stages[1:])
    assert (cfg["tiny-cpu-extended"]["align"]["enabled"], cfg["tiny-cpu-extended-lsa"]["align"]["enabled"]) == (False, True)
    assert cfg["tiny-cpu-more-steps"]["train"]["seq_len"] == 128 and cfg["tiny-cpu-extended"]["train"]["seq_len"] == 512
    assert "held-out loss" in out and "@512" in out and "stdlib-repeats" in out  # natural text and the mixture, apart
    assert "uses context" in out and "more steps" in out and "alignment (alpha 0.1) vs baseline" in out
    report = (tmp_path / "runs" / "demo-eval" / "report.md").read_text()
    assert all(s in report for s in stages) and "## Paired differences against tiny-cpu-extended" in report
    assert "## The demo's verdict" in report
    assert (tmp_path / "runs" / "demo-eval" / "perplexity_vs_length.png").stat().st_size > 0
    again = lsa("demo", *short, "--no-eval", check=False)
    assert again.stdout.count("already complete") == 4, again.stdout
