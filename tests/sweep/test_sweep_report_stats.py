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

from lsa_ds import cli
from lsa_ds.errors import UserError
from lsa_ds.sweep import spec as sweep_spec
from lsa_ds.sweep.report import write_sweep_report

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
    with pytest.raises(UserError, match="--baseline nope: not one of the arms"):
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
    assert cli.main(["sweep", str(abl), "--report", "--baseline", "enabled-false"]) == 2  # no seeds, no arms
    assert "Arms" not in text and "Across the sweep" not in text and text.endswith(f"(report in {tmp_path / 'rep'}: report.md, report.csv, report.png)")


# ------------------------------------------------------------ lsa eval reports: seeds × windows
WINDOWS = 6


def _ci(v: np.ndarray) -> dict:
    return {"mean": v.mean(), "lo": v.mean() - 0.1, "hi": v.mean() + 0.1}


def fake_eval(run: Path, shift: float, seed: int, sha: str = "w1") -> None:
    """An `lsa eval` report.json of the shape eval/cli.py writes: per-window NLL at 64 and 128
    tokens, per-sample misalignment of the last position, passkey."""
    text = np.random.default_rng(0).normal(0, 0.5, WINDOWS)  # how hard each window is: the same for every run
    rng = np.random.default_rng(seed)  # the seed's own effect on every window, the same in every arm
    own = np.random.default_rng([seed, round(shift * 1000)]).normal(0, 0.02, WINDOWS)  # this run's noise
    nll = {n: 3.0 + n / 256 + 1.0 * seed + text + rng.normal(0, 0.3, WINDOWS) + shift * (n / 64) + own
           for n in (64, 128)}
    sce = 5.0 + rng.normal(0, 0.1, WINDOWS) - 2 * shift
    skl = 0.2 + rng.uniform(0, 0.05, WINDOWS) + shift
    model = {"name": run.name, "kind": "run", "train_len": 64, "train_loss": 3.0 + shift,
             "perplexity": {"windows_sha": sha, "lengths": [
                 {"length": n, "ppl": math.exp(v.mean()), "ppl_ci": [math.exp(v.mean()) - 1, math.exp(v.mean()) + 1], "per_window": v.tolist()} for n, v in nll.items()]},
             "misalignment": {"last": {"windows_sha": sha, "sce": _ci(sce), "skl": _ci(skl), "entropy": _ci((sce - skl) / 2),
                                       "per_sample": {"sce": sce.tolist(), "skl": skl.tolist()}}},
             "passkey": {"accuracy_overall": 0.0},
             # copy retrieval and the overlap misalignment split, of the shapes eval/span_tasks.py writes
             "copy": {w: {"tokens": {"mean": 0.4 - shift + 0.01 * seed, "lo": 0.3, "hi": 0.5}}
                      for w in ("inside_l0", "beyond_l0", "at_l0")},
             "split": {"skl": 0.3 + shift, "classes": [
                 {"name": "cut", "share": 0.1, "skl": {"value": 1.2 + shift, "lo": 1.0, "hi": 1.4},
                  "sce": {"value": 6.0, "lo": 5.5, "hi": 6.5}},
                 {"name": "plain", "share": 0.9, "skl": {"value": 0.2 + shift, "lo": 0.1, "hi": 0.3},
                  "sce": {"value": 5.0, "lo": 4.5, "hi": 5.5}}]}}
    (run / "eval").mkdir()
    (run / "eval" / "report.json").write_text(json.dumps({"models": [model]}))


@pytest.fixture
def evaluated(tmp_path, monkeypatch) -> Path:
    """3 arms (off, alpha 0.1, alpha 0.3) × 3 seeds with training rows and `lsa eval` reports."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text("train: {seq_len: 64, max_steps: 3}\n")
    abl = tmp_path / "st.yaml"
    abl.write_text("base: base.yaml\ngrid:\n  - {align.enabled: [false], train.seed: [0, 1, 2]}\n"
                   "  - {align.alpha: [0.1, 0.3], train.seed: [0, 1, 2]}\n")
    for p in sweep_spec.load_sweep(abl).points:
        shift = 0.0 if p.values.get("align.enabled") is False else p.values["align.alpha"]
        seed = p.values["train.seed"]
        fake_run(p.run_dir, {"loss@64": 4.0 + shift + 0.01 * seed})
        fake_eval(p.run_dir, shift + 0.01 * seed * (shift > 0), seed)
    return abl


def _nll(run: str, n: int) -> np.ndarray:
    m = json.loads(Path(f"runs/{run}/eval/report.json").read_text())["models"][0]
    return np.array(next(p["per_window"] for p in m["perplexity"]["lengths"] if p["length"] == n))


def test_eval_numbers_are_paired_window_by_window_and_seed_by_seed(evaluated):
    assert cli.main(["sweep", str(evaluated), "--report"]) == 0
    folder = Path("runs/sweeps/st")
    rows = {(r["arm"], r["number"]): r for r in csv.DictReader((folder / "report-arms.csv").open())}
    w = rows[("st-alpha0.1", "eval loss@128")]
    d = np.stack([_nll(f"st-alpha0.1-seed{s}", 128) - _nll(f"st-enabled-false-seed{s}", 128) for s in range(3)])
    assert w["windows"] == f"3x{WINDOWS}" and float(w["wdiff"]) == pytest.approx(d.mean())
    # paired on the right seed and window, the differences are the shift plus small noise: a narrow
    # interval; pairing seed 0 with seed 1 (1 nat apart) or window j with another would widen it past 0.1
    assert float(w["wdiff_lo"]) <= d.mean() <= float(w["wdiff_hi"]) and float(w["wdiff_hi"]) - float(w["wdiff_lo"]) < 0.1
    assert (int(w["wlower"]), int(w["whigher"])) == (int((d.mean(0) < 0).sum()), int((d.mean(0) > 0).sum()))
    # the seed-paired row of the same number compares per-seed means of ln(exp(mean NLL)) = mean NLL
    assert float(w["diff"]) == pytest.approx(d.mean(axis=1).mean())
    ent = rows[("st-alpha0.3", "eval entropy (last)")]
    assert float(ent["wdiff"]) == pytest.approx(-0.3 * 1.5 - 0.01 * 1.5, abs=1e-9)  # (−2·shift − shift) / 2 per sample
    assert rows[("st-enabled-false", "eval passkey")]["mean"] == "0.0"
    # copy retrieval and the misalignment split, per arm over seeds and seed by seed against the baseline
    cut = rows[("st-alpha0.3", "eval split skl (cut)")]
    shifts = [0.3 + 0.01 * s for s in range(3)]  # fake_eval's shift of this arm per seed
    assert float(cut["mean"]) == pytest.approx(np.mean([1.2 + x for x in shifts]))
    assert float(cut["diff"]) == pytest.approx(np.mean(shifts))  # the baseline's shift is 0
    share = rows[("st-enabled-false", "eval split cut share of skl")]
    assert float(share["mean"]) == pytest.approx(0.1 * 1.2 / 0.3)
    copy = rows[("st-alpha0.3", "eval copy tokens (beyond_l0)")]
    assert float(copy["diff"]) == pytest.approx(-np.mean(shifts))
    md = (folder / "report.md").read_text()
    assert "## Arms against the baseline `st-enabled-false`, seeds × windows" in md
    assert f"| st-alpha0.1 | eval loss@128 | 3 × {WINDOWS} |" in md
    # the paper's Table 1 over all 9 runs; passkey is the same everywhere, so it is named, not correlated
    assert "## Across the sweep's 9 evaluated runs: Misalignment versus long-context quality" in md
    assert "the target is 0 for every model: nothing to correlate" in md
    corr = json.loads((folder / "report-correlation.json").read_text())
    assert (corr["table"]["resampled"], corr["table"]["groups"]) == ("groups", 3)  # whole arms, not runs
    pair = next(p for p in corr["table"]["pairs"] if p["predictor"] == "held-out loss at L"
                and p["target"].startswith("loss@2×L"))
    assert pair["n"] == 9 and pair["pearson"] > 0.9  # both carry the seed's and the arm's offsets
    for png in ("report.png", "report-arms.png", "report-correlation.png"):
        assert (folder / png).stat().st_size > 10_000


def test_windows_read_differently_are_not_paired_and_the_cli_names_the_baseline(evaluated, capsys):
    run = Path("runs/st-alpha0.1-seed1")
    (run / "eval" / "report.json").unlink()
    (run / "eval").rmdir()
    fake_eval(run, 0.1, 1, sha="other")
    assert cli.main(["sweep", str(evaluated), "--report", "--baseline", "alpha0.3"]) == 0
    md = capsys.readouterr().out
    assert "## Arms against the baseline `st-alpha0.3` (chosen by name), seed by seed" in md
    assert "## Arms against the baseline `st-alpha0.3`, seeds × windows" in md
    rows = {(r["arm"], r["number"]): r for r in csv.DictReader(Path("runs/sweeps/st/report-arms.csv").open())}
    assert rows[("st-alpha0.1", "eval loss@64")]["windows"] == f"2x{WINDOWS}"  # seed 1 read other windows
    assert rows[("st-alpha0.1", "eval loss@64")]["paired_seeds"] == "0;1;2"   # its per-seed mean still pairs
    for mode in (["--report"], []):  # refused before anything is trained or written
        assert cli.main(["sweep", str(evaluated), *mode, "--baseline", "nope"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("error: --baseline nope: not one of the arms st-alpha0.1, st-alpha0.3, st-enabled-false")
