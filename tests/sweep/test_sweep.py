"""`lsa sweep`: grid expansion and naming, refusal of bad ablation files, --print, --slurm (script
content, shellcheck, array task -> recipe), --report on fabricated run directories, the local run
loop's decisions (skip / resume / eval) with training stubbed out, every shipped recipe and
ablation resolving, and one tiny 2-point sweep through the real launcher."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lsa_ds import cli
from lsa_ds.recipe import load_recipe
from lsa_ds.recipe.ds_config import resolve_ds_config
from lsa_ds.sweep import cli as sweep
from lsa_ds.sweep import spec as sweep_spec

REPO = Path(__file__).resolve().parents[2]
SHELLCHECK = Path(sys.executable).parent / "shellcheck"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def ablation(tmp_path, monkeypatch) -> Path:
    """A base recipe and a 3 × 2 ablation over it, in a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "recipes" / "base.yaml", "run: {name: ignored}\nmodel: {preset: tiny, rope: {factor: 2}}\n"
                                              "train: {seq_len: 64, max_steps: 3}\nalign: {enabled: false}\n")
    return write(tmp_path / "recipes" / "ablations" / "sw.yaml", """\
base: ../base.yaml
name: sw
set: {align.enabled: true, train: {max_steps: 7}}
grid:
  align.alpha: [0, 0.1, 0.3]
  model.rope.type: [linear, yarn]
""")


def refuse(capsys, *argv: str) -> str:
    """Run `lsa sweep ...` in-process; assert exit 2 with one line and no traceback; return it."""
    code = cli.main(["sweep", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------ expansion
def test_grid_expands_to_the_product_with_readable_unique_names(ablation):
    sw = sweep_spec.load_sweep(ablation)
    assert len(sw.points) == 3 * 2
    assert [p.name for p in sw.points] == [
        "sw-alpha0-rope.type-linear", "sw-alpha0-rope.type-yarn", "sw-alpha0.1-rope.type-linear",
        "sw-alpha0.1-rope.type-yarn", "sw-alpha0.3-rope.type-linear", "sw-alpha0.3-rope.type-yarn"]
    for p, (alpha, rope) in zip(sw.points, [(a, r) for a in (0, 0.1, 0.3) for r in ("linear", "yarn")]):
        r = p.recipe
        assert (r.align.alpha, r.model.rope.type, r.run.name) == (alpha, rope, p.name)
        assert r.align.enabled is True and r.train.max_steps == 7  # `set:`, nested and dotted
        assert r.model.rope.factor == 2 and r.train.seq_len == 64  # the rest comes from the base
        assert p.run_dir == Path("runs") / p.name
    assert sw.folder == Path("runs/sweeps/sw")


def test_a_list_of_grids_is_the_union_and_grid_values_override_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "base.yaml", "train: {seq_len: 64, max_steps: 3}\n")
    abl = write(tmp_path / "mini.yaml", "base: base.yaml\nset: {align.enabled: true}\n"
                                        "grid:\n  - {align.enabled: [false]}\n  - {align.alpha: [0, 0.3]}\n")
    sw = sweep_spec.load_sweep(abl, ["train.max_steps=2"])
    assert [p.name for p in sw.points] == ["mini-enabled-false", "mini-alpha0", "mini-alpha0.3"]
    assert [p.recipe.align.enabled for p in sw.points] == [False, True, True]
    assert all(p.recipe.train.max_steps == 2 for p in sw.points)  # command-line --set reaches every point
    assert sw.points[0].overrides == ["align.enabled=false", "train.max_steps=2", "run.name=mini-enabled-false"]


def test_names_are_filesystem_safe_and_keys_sharing_a_tail_stay_apart():
    keys = ["train.seed", "eval.seed", "data.sources"]
    name = sweep_spec.label({"train.seed": 1, "eval.seed": 2, "data.sources": [{"name": "a/b", "type": "txt"}]}, keys)
    assert name.startswith("train.seed1-eval.seed2-sources-")
    assert "/" not in name and " " not in name and len(name) < 90
    assert sweep_spec.label({"align.enabled": False, "model.rope.theta": 1e6}, ["align.enabled", "model.rope.theta"]) == \
        "enabled-false-rope.theta1000000.0"


# ------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("body, expected", [
    ("grid: {align.alphaa: [0, 1]}", "grid key 'align.alphaa': unknown recipe key 'align.alphaa' (did you mean `align.alpha`?)"),
    ("grid: {align.alpha: [0]}\nset: {trian.max_steps: 3}", "set key 'trian.max_steps': unknown recipe key"),
    ("grid: {align.alpha.x: [0]}", "'align.alpha' is a value, not a section"),
    ("grid: {align.alpha: 0.1}", "grid key 'align.alpha': expected a non-empty list"),
    ("grid: {align.alpha: []}", "grid key 'align.alpha': expected a non-empty list"),
    ("grid: {}", "grid"),
    ("grid: {run.name: [a, b]}", "run names are made by the sweep"),
    ("grid: {align.alpha: [0]}\ngird: {}", "unknown key 'gird'"),
    ("grid: {align.alpha: [0, -1]}", "point sw-alpha-1"),
    ("grid: {align.alpha: [0.1, 0.1]}", "both get run name 'sw-alpha0.1'"),
])
def test_bad_ablations_are_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys, body, expected):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "base.yaml", "train: {seq_len: 64, max_steps: 3}\n")
    abl = write(tmp_path / "sw.yaml", f"base: base.yaml\nname: sw\n{body}\n")
    for mode in ([], ["--print"], ["--slurm"], ["--report"]):
        err = refuse(capsys, str(abl), *mode)
        assert "sw.yaml" in err and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml", "sw.yaml"]  # nothing written


def test_a_missing_base_and_a_set_on_a_grid_key_are_refused(ablation, capsys):
    write(ablation.parent / "nobase.yaml", "base: ../nope.yaml\ngrid: {align.alpha: [0]}\n")
    assert "base recipe '../nope.yaml' not found" in refuse(capsys, str(ablation.parent / "nobase.yaml"))
    assert "--set align.alpha" in refuse(capsys, str(ablation), "--print", "--set", "align.alpha=1")


# ------------------------------------------------------------------------------------ --print
def test_print_gives_one_train_command_per_point_that_rebuilds_its_recipe(ablation, capsys):
    assert cli.main(["sweep", str(ablation), "--print", "--set", "train.seed=7"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    points = sweep_spec.load_sweep(ablation, ["train.seed=7"]).points
    assert len(lines) == len(points)
    for line, point in zip(lines, points):
        argv = shlex.split(line)
        assert argv[:3] == ["lsa", "train", "recipes/base.yaml"]
        sets = argv[4::2]
        assert argv[3::2] == ["--set"] * len(sets)
        assert load_recipe(argv[2], sets) == point.recipe
    assert not Path("runs").exists()


def test_print_lists_unfinished_prerequisites_and_eval_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "r" / "stage1.yaml", "run: {name: stage1}\ntrain: {seq_len: 64, max_steps: 3}\n")
    write(tmp_path / "r" / "stage2.yaml", "model: {init_from: runs/stage1}\ntrain: {seq_len: 128, max_steps: 3}\n")
    abl = write(tmp_path / "r" / "a" / "x.yaml", "base: ../stage2.yaml\nrequires: [../stage1.yaml]\n"
                                                 "grid: {align.alpha: [0.1]}\neval: --tasks ppl --windows 4\n")
    assert cli.main(["sweep", str(abl), "--print"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert lines == ["lsa train r/stage1.yaml", "lsa train r/stage2.yaml --set align.alpha=0.1 --set run.name=x-alpha0.1",
                     "lsa eval runs/x-alpha0.1 --tasks ppl --windows 4"]
    write(tmp_path / "runs" / "stage1" / "hf" / "config.json", "{}")  # finished: no longer printed
    assert cli.main(["sweep", str(abl), "--print"]) == 0
    assert "stage1.yaml" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------ --slurm
def test_slurm_writes_an_array_script_that_shellcheck_accepts_and_maps_tasks_to_recipes(ablation, tmp_path, capsys):
    write(ablation.parent / "sw.yaml", ablation.read_text() + "slurm: {nodes: 2, gpus-per-node: 8, time: '12:00:00'}\n")
    assert cli.main(["sweep", str(ablation), "--slurm"]) == 0
    out = capsys.readouterr().out
    folder = Path("runs/sweeps/sw")
    script = folder / "slurm-array.sh"
    assert f"sbatch --array=0-5 {script}" in out.splitlines()
    text = script.read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --time=12:00:00",
                 'exec bash launch/slurm.sbatch "$RECIPE"'):
        assert line in text, line
    assert (folder / "logs").is_dir()  # sbatch does not create the --output folder itself
    check = subprocess.run([str(SHELLCHECK), str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    points = sweep_spec.load_sweep(ablation).points
    manifest = json.loads((folder / "sweep.json").read_text())
    assert [p["name"] for p in manifest["points"]] == [p.name for p in points]
    # every array task runs launch/slurm.sbatch on its own point's resolved recipe, which loads as-is
    write(tmp_path / "launch" / "slurm.sbatch", 'echo "ARGS $*"\n')
    for task, point in enumerate(points):
        run = subprocess.run(["bash", str(script.resolve())], capture_output=True, text=True, cwd="/",
                             env={**os.environ, "SLURM_ARRAY_TASK_ID": str(task)})
        assert run.returncode == 0, run.stderr
        recipe_file = run.stdout.splitlines()[-1].removeprefix("ARGS ")
        assert load_recipe(recipe_file) == point.recipe
    missing = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "SLURM_ARRAY_TASK_ID"})
    assert missing.returncode != 0 and "sbatch --array=0-5" in missing.stderr


# ------------------------------------------------------------------------------------ --report
def fabricate(run: Path, recipe, evals: list[dict], finished: bool = True, report: dict | None = None) -> None:
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    rows = [{"step": s, "loss": 5.0 - s, "step_time": 0.5} for s in (1, 2, 3)] + evals
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')  # a cut row
    if finished:
        write(run / "hf" / "config.json", "{}")
    if report:
        write(run / "eval" / "report.json", json.dumps(report))


def test_report_tabulates_final_metrics_marks_missing_runs_and_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "base.yaml", "train: {seq_len: 64, max_steps: 3}\n")
    abl = write(tmp_path / "rep.yaml", "base: base.yaml\ngrid:\n  - {align.enabled: [false]}\n"
                                       "  - {align.alpha: [0, 0.1, 0.3]}\n")
    pts = {p.name: p for p in sweep_spec.load_sweep(abl).points}
    early = {"kind": "eval", "step": 2, "loss@64": 9.0, "loss@128": 9.5}
    fabricate(Path("runs/rep-enabled-false"), pts["rep-enabled-false"].recipe,
              [early, {"kind": "eval", "step": 3, "loss@64": 4.25, "ppl@64": 70.1, "loss@128": 4.5, "ppl@128": 90.0}])
    mis = {"sce": {"mean": 6.5, "lo": 6.0, "hi": 7.0, "n": 8}, "skl": {"mean": 0.25, "lo": 0.2, "hi": 0.3, "n": 8}}
    report = {"models": [{"name": "rep-alpha0.1", "perplexity": {"lengths": [
        {"length": 64, "ppl": 60.0, "ppl_ci": [55.0, 65.0]}, {"length": 128, "ppl": 80.0, "ppl_ci": [70.0, 90.0]}]},
        "misalignment": {"last": mis}}]}
    fabricate(Path("runs/rep-alpha0.1"), pts["rep-alpha0.1"].recipe,
              [{"kind": "eval", "step": 3, "loss@64": 4.0, "loss@128": 4.375, "misalign_sce": 6.75,
                "misalign_skl": 0.125, "ce_gap": 0.0625}], report=report)
    fabricate(Path("runs/rep-alpha0.3"), pts["rep-alpha0.3"].recipe, [early], finished=False)
    # rep-alpha0 does not exist at all
    assert cli.main(["sweep", str(abl), "--report"]) == 0
    printed = capsys.readouterr().out
    folder = Path("runs/sweeps/rep")
    md = (folder / "report.md").read_text()
    assert md.strip() in printed
    rows = {r["run"]: r for r in csv.DictReader((folder / "report.csv").open())}
    assert list(rows) == ["rep-enabled-false", "rep-alpha0", "rep-alpha0.1", "rep-alpha0.3"]
    base, a0, a1, a3 = rows.values()
    assert (base["status"], a0["status"], a1["status"], a3["status"]) == ("finished", "missing", "finished", "unfinished")
    assert (base["align.enabled"], base["align.alpha"], a1["align.alpha"]) == ("False", "", "0.1")
    assert float(base["loss@64"]) == 4.25 and float(base["loss@128"]) == 4.5 and base["eval_step"] == "3"
    assert float(base["ppl@128"]) == 90.0 and base["misalign_sce"] == "" and float(base["step_seconds"]) == 0.5
    assert (float(a1["misalign_sce"]), float(a1["misalign_skl"]), float(a1["ce_gap"])) == (6.75, 0.125, 0.0625)
    assert float(a1["eval_ppl@128"]) == 80.0 and float(a1["eval_ppl@128_lo"]) == 70.0
    assert float(a1["eval_misalign_skl_last"]) == 0.25 and float(a1["eval_misalign_sce_last_hi"]) == 7.0
    assert float(a3["loss@64"]) == 9.0 and a0["loss@64"] == "" and a0["step"] == ""
    assert "| rep-alpha0 |  | 0 | missing | – |" in md
    assert "| rep-alpha0.1 |  | 0.1 | finished | 3 | 4.0000 | 4.3750 | 6.7500 | 0.1250 | 0.0625 | 0.50 |" in md
    assert "0.250 [0.200, 0.300]" in md and "**Not finished:** rep-alpha0, rep-alpha0.3" in md
    png = (folder / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


# ------------------------------------------------------------------------------ local run loop
def test_run_loop_skips_finished_resumes_unfinished_and_evaluates(ablation, monkeypatch, capsys):
    write(ablation.parent / "sw.yaml", ablation.read_text() + "eval: [--tasks, ppl]\n")
    points = sweep_spec.load_sweep(ablation).points
    fabricate(points[0].run_dir, points[0].recipe, [], report={"models": [{}]})  # finished and evaluated
    fabricate(points[1].run_dir, points[1].recipe, [])                           # finished, not evaluated
    fabricate(points[2].run_dir, points[2].recipe, [], finished=False)           # interrupted
    calls = []

    def fake_lsa(args):
        calls.append(args)
        return 0

    monkeypatch.setattr(sweep, "_lsa", fake_lsa)
    assert cli.main(["sweep", str(ablation), "--nproc", "1"]) == 0
    folder = Path("runs/sweeps/sw/recipes")
    assert calls[0] == ["eval", str(points[1].run_dir), "--tasks", "ppl"]
    assert calls[1] == ["train", str(folder / f"{points[2].name}.yaml"), "--resume", "--nproc", "1"]
    assert calls[3] == ["train", str(folder / f"{points[3].name}.yaml"), "--nproc", "1"]
    assert len(calls) == 2 + 2 * 4 - 1  # 4 trainings (points 2-5) and 5 evaluations
    assert "# Sweep `sw`" in capsys.readouterr().out  # the report closes the loop
    # a failing point stops the sweep with exit 1
    monkeypatch.setattr(sweep, "_lsa", lambda args: 1)
    assert cli.main(["sweep", str(ablation)]) == 1


def test_a_finished_run_with_another_recipe_is_refused_before_anything_runs(ablation, monkeypatch, capsys):
    points = sweep_spec.load_sweep(ablation).points
    fabricate(points[4].run_dir, points[0].recipe, [])  # alpha 0's recipe under alpha 0.3's name
    monkeypatch.setattr(sweep, "_lsa", lambda args: pytest.fail(f"ran {args}"))
    err = refuse(capsys, str(ablation))
    assert f"{points[4].run_dir} finished with a different recipe (align.alpha: 0.0 in the run, 0.3 here)" in err


# ------------------------------------------------------------------------- shipped recipes
def _fabricate_inputs(root: Path) -> None:
    """What the shipped recipes read before any data is tokenized, stood in for: the committed
    stage-1 export (copied), the llama2 recipe's checkpoint folder and its jsonl corpus."""
    import shutil

    from transformers import LlamaConfig

    from lsa_ds.model.config import PRESETS

    shutil.copytree(REPO / "demo" / "tiny-cpu-base" / "hf", root / "demo" / "tiny-cpu-base" / "hf")
    llama = {k: v for k, v in PRESETS["llama2-7b"].items() if k != "model_type"}
    LlamaConfig(vocab_size=32000, **llama).save_pretrained(root / "models" / "Llama-2-7b-hf")
    (root / "data").mkdir()
    (root / "data" / "pretrain.jsonl").write_text('{"text": "hello"}\n')


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_passes_the_dry_run_given_its_inputs(recipe, capsys, tmp_path, monkeypatch):
    """`lsa train --dry-run` checks everything but the data itself, inputs included: a shipped
    recipe passes once what it reads exists, and is refused in one line while it does not."""
    monkeypatch.chdir(tmp_path)
    # flash-attn is CUDA-only; its refusal on this machine is tested in tests/train/test_start_checks.py
    cuda_only = ["--set", "model.attn_impl=sdpa"] if "llama2" in recipe.name else []
    args = ["train", str(recipe), "--dry-run", "--nproc", "8", *cuda_only]
    from lsa_ds.recipe import load_recipe

    r = load_recipe(recipe)
    if r.model.init_from or r.model.path or any(src.type != "stdlib" for src in r.data.sources):
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and ("not" in err or "no " in err), err
    _fabricate_inputs(tmp_path)
    assert cli.main(args) == 0, capsys.readouterr().err
    assert "# DeepSpeed config for 8 ranks" in capsys.readouterr().out


@pytest.mark.parametrize("ablation_file", sorted((REPO / "recipes" / "ablations").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_ablation_expands_and_every_point_resolves(ablation_file):
    sw = sweep_spec.load_sweep(ablation_file)
    assert sw.points and len({p.name for p in sw.points}) == len(sw.points)
    for p in [*sw.requires, *sw.points]:
        t = p.recipe.train
        ds = resolve_ds_config(p.recipe, 8)
        dp = 8 // t.sequence_parallel
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == \
            (t.micro_batch_size, t.grad_accum, t.micro_batch_size * t.grad_accum * dp), p.name
        assert ds["gradient_clipping"] == t.grad_clip and ds["zero_optimization"]["stage"] in (2, 3), p.name
        assert (ds["bf16"]["enabled"], ds["fp16"]["enabled"]) == (t.precision == "bf16", t.precision == "fp16"), p.name
        assert ds["bf16"]["check_grad_overflow"] is True and "auto" not in json.dumps(ds), p.name


def test_the_paper_recipe_and_its_ablations_say_what_the_paper_does():
    r = load_recipe(REPO / "recipes" / "llama2-7b-4k-to-8k.yaml")
    assert (r.train.seq_len, r.model.rope.type, r.model.rope.factor, r.align.alpha, r.align.divergence) == \
        (8192, "linear", 2, 0.1, "sce")
    assert r.train.precision == "bf16" and r.train.ds_config == "zero3" and r.model.path and r.shift_max == 4096
    abl = REPO / "recipes" / "ablations"
    assert [p.recipe.align.alpha for p in sweep_spec.load_sweep(abl / "llama2-alpha.yaml").points[1:]] == [0, 0.1, 0.3, 0.5, 1.0]
    assert [p.recipe.shift_max for p in sweep_spec.load_sweep(abl / "llama2-shift-range.yaml").points] == [4096, 8191]
    assert [p.recipe.align.enabled for p in sweep_spec.load_sweep(abl / "llama2-baseline.yaml").points] == [False, True]
    mini = sweep_spec.load_sweep(abl / "cpu-mini-replication.yaml")
    assert [p.recipe.align.alpha if p.recipe.align.enabled else None for p in mini.points] == [None, 0, 0.1, 0.3]
    assert not mini.requires and mini.points[0].recipe.model.init_from == "demo/tiny-cpu-base"  # the committed base


# --------------------------------------------------------------------------- end to end
@pytest.mark.deepspeed
def test_a_two_point_sweep_trains_evaluates_and_reports(tmp_path, prepared, data_cache_dir):
    from tests.conftest import SMALL_DATA
    from tests.launch import lsa, sets

    base = write(tmp_path / "base.yaml", yaml.safe_dump({"model": {"preset": "tiny"}, "eval": {"windows": 2},
                                                         "train": {"seq_len": 64, "max_steps": 2}}))
    abl = write(tmp_path / "e2e.yaml", f"base: {base.name}\ngrid: {{align.alpha: [0, 0.3]}}\n"
                                       "eval: [--tasks, ppl, --windows, '2', --length-multipliers, '1,2', --no-progress]\n")
    common = sets(*SMALL_DATA, f"data.cache_dir={data_cache_dir}", f"run.output_dir={tmp_path / 'runs'}")
    out = lsa("sweep", str(abl), *common, "--nproc", "2", timeout=900).stdout
    for name in ("e2e-alpha0", "e2e-alpha0.3"):
        assert (tmp_path / "runs" / name / "hf" / "config.json").is_file()
        assert (tmp_path / "runs" / name / "eval" / "report.json").is_file()
    rows = list(csv.DictReader((tmp_path / "runs" / "sweeps" / "e2e" / "report.csv").open()))
    assert [r["status"] for r in rows] == ["finished", "finished"] and all(r["loss@128"] and r["eval_ppl@128"] for r in rows)
    assert "# Sweep `e2e`" in out
    again = lsa("sweep", str(abl), *common).stdout  # everything done: nothing trains again
    assert again.count("skipping training") == 2 and again.count("evaluated already") == 2


def test_the_studies_have_the_arms_seeds_and_scale_they_promise():
    """The CPU study of docs/study/report.md: eight arms × three seeds from the committed base; the
    GPU study: a ≈100M model from scratch in bf16, then two arms × two seeds."""
    import torch
    from transformers import AutoModelForCausalLM

    from lsa_ds.model.config import build_hf_config

    cpu = sweep_spec.load_sweep(REPO / "recipes" / "ablations" / "cpu-study.yaml")
    arms = {}
    for p in cpu.points:
        a = p.recipe.align
        arm = ("off" if not a.enabled else f"{a.divergence} {a.alpha:g}" + (f" detach {a.detach}" if a.detach != "none" else ""),
               p.recipe.model.rope.type)
        arms.setdefault(arm, []).append(p.recipe.train.seed)
    assert arms == {(arm, rope): [1234, 1235, 1236] for arm, rope in [
        ("off", "linear"), ("off", "yarn"), ("sce 0", "linear"), ("sce 0.1", "linear"), ("sce 0.3", "linear"),
        ("skl 0.1", "linear"), ("sce 0.1 detach long", "linear"), ("sce 0.1", "yarn")]}
    assert not cpu.requires and {p.recipe.model.init_from for p in cpu.points} == {"demo/tiny-cpu-base"}
    gpu = sweep_spec.load_sweep(REPO / "recipes" / "ablations" / "gpu-study.yaml")
    (base,) = gpu.requires
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_hf_config(base.recipe, 8192, 1, 2, None))
    assert 90e6 < sum(p.numel() for p in model.parameters()) < 110e6
    assert base.recipe.model.preset and not base.recipe.model.init_from  # from scratch
    assert [(p.recipe.align.enabled, p.recipe.train.seed) for p in gpu.points] == \
        [(False, 1234), (False, 1235), (True, 1234), (True, 1235)]
    assert {p.recipe.train.precision for p in [base, *gpu.points]} == {"bf16"}
    assert {p.recipe.model.init_from for p in gpu.points} == {str(base.recipe.run_dir)}
