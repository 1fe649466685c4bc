"""`lsa sweep --report` over seeds: points differing only in `train.seed` form arms; the report
gives each arm's mean over seeds with a t interval and its seed-paired difference from the
baseline arm (alignment off), in report.md and report-arms.csv. Runs are fabricated directories."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lsa_ds import cli, sweep_spec
from lsa_ds.errors import UserError
from lsa_ds.sweep_report import write_sweep_report

T2 = 4.3027  # two-sided 95% t quantile, 2 degrees of freedom
BASE = {"loss@64": [4.0, 4.2, 4.4], "misalign_skl": [0.5, 0.6, 0.7]}
ALIGN = {"loss@64": [3.9, 4.0, 4.2], "misalign_skl": [0.2, 0.25, 0.3], "misalign_entropy": [1.0, 1.1, 1.2]}


def fake_run(run: Path, evals: dict, finished: bool = True) -> None:
    run.mkdir(parents=True)
    rows = [{"step": 1, "loss": 5.0}, {"kind": "eval", "step": 1, **evals}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (run / "hf").mkdir()
        (run / "hf" / "config.json").write_text("{}")


@pytest.fixture
def seeded(tmp_path, monkeypatch) -> Path:
    """2 arms (alignment off / on) × 3 seeds, every run finished."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text("train: {seq_len: 64, max_steps: 3}\n")
    abl = tmp_path / "seeds.yaml"
    abl.write_text("base: base.yaml\ngrid: {align.enabled: [false, true], train.seed: [0, 1, 2]}\n")
    for p in sweep_spec.load_sweep(abl).points:
        table = ALIGN if p.values["align.enabled"] else BASE
        fake_run(p.run_dir, {k: v[p.values["train.seed"]] for k, v in table.items()})
    return abl


def _half(values) -> float:
    return T2 * np.std(values, ddof=1) / math.sqrt(len(values))


def test_arms_get_means_over_seeds_t_intervals_and_seed_paired_differences(seeded, capsys):
    assert cli.main(["sweep", str(seeded), "--report"]) == 0
    folder = Path("runs/sweeps/seeds")
    md = (folder / "report.md").read_text()
    assert md.strip() in capsys.readouterr().out and "report-arms.csv" in md
    rows = {(r["arm"], r["number"]): r for r in csv.DictReader((folder / "report-arms.csv").open())}
    off, on = rows[("seeds-enabled-false", "loss@64")], rows[("seeds-enabled-true", "loss@64")]
    assert off["align.enabled"] == "false" and off["seeds"] == "0;1;2" and off["n"] == "3"
    assert float(off["mean"]) == pytest.approx(4.2) and float(off["hi"]) == pytest.approx(4.2 + _half(BASE["loss@64"]))
    assert float(on["mean"]) == pytest.approx((3.9 + 4.0 + 4.2) / 3)
    assert float(on["std"]) == pytest.approx(np.std(ALIGN["loss@64"], ddof=1))
    assert off["baseline"] == "" and on["baseline"] == "seeds-enabled-false" and on["paired_seeds"] == "0;1;2"
    # differences -0.1, -0.2, -0.2
    assert float(on["diff"]) == pytest.approx(-1 / 6)
    assert float(on["diff_lo"]) == pytest.approx(-1 / 6 - _half([-0.1, -0.2, -0.2]))
    assert (on["lower"], on["higher"], float(on["p_sign"])) == ("3", "0", 0.25)
    assert float(on["p_boot"]) == pytest.approx(1 / 10001)  # no centred resample reaches the shift
    skl = rows[("seeds-enabled-true", "misalign_skl")]
    assert float(skl["diff"]) == pytest.approx(-0.35)  # differences -0.3, -0.35, -0.4: s = 0.05
    assert float(skl["diff_hi"]) == pytest.approx(-0.35 + T2 * 0.05 / math.sqrt(3))
    ent_on, ent_off = rows[("seeds-enabled-true", "misalign_entropy")], rows[("seeds-enabled-false", "misalign_entropy")]
    assert float(ent_on["mean"]) == pytest.approx(1.1) and ent_off["n"] == "0" and ent_on["diff"] == ""  # absent in baseline
    assert "## Arms over seeds" in md and "## Arms against the baseline `seeds-enabled-false` (alignment off)" in md
    assert (f"| loss@64 | 4.2000 [{4.2 - _half(BASE['loss@64']):.4f}, {4.2 + _half(BASE['loss@64']):.4f}] |") in md
    d_half = _half([-0.1, -0.2, -0.2])
    assert (f"| seeds-enabled-true | loss@64 | 0, 1, 2 | -0.1667 [{-1 / 6 - d_half:+.4f}, {-1 / 6 + d_half:+.4f}] "
            "| 3 / 0 | 0.25 | 0.0001 |") in md


def test_unfinished_seeds_are_left_out_and_the_baseline_can_be_named(seeded, tmp_path):
    sw = sweep_spec.load_sweep(seeded)
    (Path("runs/seeds-enabled-true-seed2") / "hf" / "config.json").unlink()  # still training
    folder = tmp_path / "out"
    write_sweep_report(sw, folder, baseline="enabled-true")
    rows = {(r["arm"], r["number"]): r for r in csv.DictReader((folder / "report-arms.csv").open())}
    on, off = rows[("seeds-enabled-true", "loss@64")], rows[("seeds-enabled-false", "loss@64")]
    assert on["seeds"] == "0;1" and float(on["mean"]) == pytest.approx(3.95)
    assert off["baseline"] == "seeds-enabled-true" and off["paired_seeds"] == "0;1" and float(off["diff"]) == pytest.approx(0.15)
    md = (folder / "report.md").read_text()
    assert "## Arms against the baseline `seeds-enabled-true` (chosen by name)" in md
    assert "seeds-enabled-true (seeds 0, 1; 2 not finished)" in md
    with pytest.raises(UserError, match="baseline arm 'nope'"):
        write_sweep_report(sw, folder, baseline="nope")


def test_a_sweep_without_seeds_gets_the_report_it_always_had(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text("train: {seq_len: 64, max_steps: 3}\n")
    abl = tmp_path / "plain.yaml"
    abl.write_text("base: base.yaml\ngrid: {align.enabled: [false, true]}\n")
    for p in sweep_spec.load_sweep(abl).points:
        fake_run(p.run_dir, {"loss@64": 4.0})
    text = write_sweep_report(sweep_spec.load_sweep(abl), tmp_path / "rep")
    assert sorted(f.name for f in (tmp_path / "rep").iterdir()) == ["report.csv", "report.md", "report.png"]
    assert "Arms" not in text and text.endswith("(report in %s/report.md, .csv, .png)" % (tmp_path / "rep"))
