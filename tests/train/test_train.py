"""Training core through the real launcher: 2-rank ZeRO-3 on CPU, run directory contract,
token-weighted normalisation, continuing from a run, bad recipes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lsa_ds import cli
from lsa_ds.train.distributed import SHM_DIR
from tests.conftest import SMALL_DATA
from tests.launch import lsa, metrics, sets

pytestmark = pytest.mark.deepspeed

STEPS = 12


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prepared, data_cache_dir):
    """A 2-rank run (micro 1 × accum 2 × 2 ranks) and a 1-rank run (micro 2 × accum 2) of the same
    global batches, then a 2-rank stage that continues from the first with linear RoPE ×2."""
    out = tmp_path_factory.mktemp("runs")
    common = [*SMALL_DATA, f"data.cache_dir={data_cache_dir}", f"run.output_dir={out}", "model.preset=tiny",
              "train.seq_len=64", f"train.max_steps={STEPS}", "train.grad_accum=2", "optim.lr=3e-3",
              "optim.warmup_steps=2", "align.enabled=false", "eval.windows=4", "eval.every_steps=6"]
    recipe = out / "base.yaml"
    recipe.write_text("{}\n")
    shm_before = _shm_buffers()
    lsa("train", str(recipe), *sets(*common, "run.name=two", "train.micro_batch_size=1", "run.report_to=[tensorboard,wandb]"),
        "--nproc", "2")  # wandb offline (tests.launch.ENV)
    lsa("train", str(recipe), *sets(*common, "run.name=one", "train.micro_batch_size=2"), "--nproc", "1")
    lsa("train", str(recipe), *sets(*common, "run.name=ext", "train.micro_batch_size=1", "train.seq_len=256",
                                    f"model.init_from={out / 'two'}", "model.rope.type=linear", "train.max_steps=3",
                                    "eval.lengths=[64,256]"), "--nproc", "2")
    (out / "shm-left.txt").write_text("\n".join(sorted(_shm_buffers() - shm_before)))
    return out


def _shm_buffers() -> set[str]:
    return {p.name for p in SHM_DIR.glob("deepspeed_allreduce_buffer_*")}


def test_ranks_leave_no_shared_memory_behind(runs):
    """DeepSpeed's CPU all-reduce buffers (66 MiB per rank in /dev/shm, i.e. RAM) are unlinked by
    lsa_ds.train.distributed; DeepSpeed itself leaves them, and a day of launches filled 15 GiB."""
    assert (runs / "shm-left.txt").read_text() == ""


def test_two_rank_zero3_run_trains_and_fills_the_run_directory(runs):
    run = runs / "two"
    for name in ("config.yaml", "ds_config.json", "metrics.jsonl", "run.json", "tb", "hf/config.json", "hf/model.safetensors",
                 "hf/tokenizer.model", "hf/generation_config.json", "curves.png"):
        assert (run / name).exists(), name
    from PIL import Image

    with Image.open(run / "curves.png") as png:  # a real picture, not an empty file
        assert png.format == "PNG" and png.size[0] > 800
    train, evals = metrics(run)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for key in ("loss", "ce", "lr", "grad_norm", "tokens_per_s", "step_time", "consumed_samples", "peak_mem_mb"):
        assert all(isinstance(r[key], (int, float)) for r in train), key
    _throughput_is_the_formulas(run, train)
    first, last = sum(r["loss"] for r in train[:3]) / 3, sum(r["loss"] for r in train[-3:]) / 3
    assert last < first - 0.3, (first, last)
    assert [e["step"] for e in evals] == [6, 12] and evals[1]["loss@64"] < evals[0]["loss@64"]
    # the baseline's held-out misalignment is measured too (both views of fixed held-out windows)
    assert all(e["misalign_sce"] > 0 and e["misalign_skl"] >= 0 and "ce_gap" in e for e in evals)
    assert all(e["misalign_entropy"] == pytest.approx((e["misalign_sce"] - e["misalign_skl"]) / 2) for e in evals)
    assert all(e["misalign_entropy"] > 0 for e in evals)
    assert train[-1]["consumed_samples"] == STEPS * 4
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["train_batch_size"] == 4 and ds["zero_optimization"]["stage"] == 3 and ds["gradient_clipping"] == 1.0


def _throughput_is_the_formulas(run, train):
    """4 rows of 64 tokens per step (micro 1 × accum 2 × 2 ranks, one view: alignment off); FLOPs
    from lsa_ds.model.flops on the exported config; no MFU on CPU (no peak known)."""
    from transformers import AutoConfig

    from lsa_ds.model.flops import step_flops

    flops = step_flops(AutoConfig.from_pretrained(run / "hf"), 4, 64).model
    for r in train:
        assert r["tokens_per_s"] * r["step_time"] == pytest.approx(4 * 64)
        assert r["tokens_per_s_per_rank"] == pytest.approx(r["tokens_per_s"] / 2)
        assert r["effective_tokens_per_s"] == pytest.approx(r["tokens_per_s"])
        assert r["flops_per_step"] == r["hardware_flops_per_step"] == flops  # one loss chunk: nothing recomputed
        assert r["tflops"] == pytest.approx(flops / r["step_time"] / 1e12)
        assert r["tflops_per_rank"] == pytest.approx(r["tflops"] / 2) and r["mfu"] is None
    info = json.loads((run / "run.json").read_text())
    assert info["device"] == "cpu" and info["peak_tflops"] is None


def test_wandb_offline_holds_the_same_scalars_as_metrics_jsonl(runs):
    from tests.launch import wandb_history

    run = runs / "two"
    history = wandb_history(run)
    run_id = (run / "wandb" / "run-id").read_text().strip()
    assert [p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")] == [run_id]
    for kind, rows in zip(("train", "eval"), metrics(run)):
        logged = [h for h in history if any(k.startswith(kind + "/") for k in h)]
        assert [h["step"] for h in logged] == [r["step"] for r in rows]
        for h, r in zip(logged, rows):
            numbers = {f"{kind}/{k}": v for k, v in r.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
            assert {k: v for k, v in h.items() if k.startswith(kind + "/")} == numbers


def test_each_rank_holds_about_half_of_the_parameters(runs):
    info = json.loads((runs / "two" / "run.json").read_text())
    assert info["world_size"] == 2
    for held in info["params_per_rank"]:
        assert 0.45 * info["params"] < held < 0.6 * info["params"]


def test_tensorboard_events_are_readable(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs / "two" / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/tflops_per_rank",
            "train/flops_per_step", "train/effective_tokens_per_s", "eval/loss@64"} <= set(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, STEPS + 1))


def test_loss_is_token_weighted_whatever_the_ranks(runs):
    """Same global batches on 2 ranks × accum 2 and on 1 rank: the same per-step losses."""
    two, _ = metrics(runs / "two")
    one, _ = metrics(runs / "one")
    for a, b in zip(two, one):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-5)


def test_export_loads_in_plain_transformers_and_init_from_continues(runs):
    from transformers import AutoModelForCausalLM

    ext = runs / "ext"
    model = AutoModelForCausalLM.from_pretrained(ext / "hf")
    assert model.config.rope_parameters["rope_type"] == "linear" and model.config.rope_parameters["factor"] == 2
    assert json.loads((ext / "run.json").read_text())["rope"]["factor"] == 2
    train, evals = metrics(ext)
    base_train, _ = metrics(runs / "two")
    # continued from the trained base: starts near where the base ended, far below a fresh model
    assert train[0]["loss"] < base_train[0]["loss"] - 0.3
    assert set(evals[-1]) >= {"loss@64", "loss@256"}


def test_export_frames_text_as_training_did_and_generates_with_a_cache(runs):
    """Plain transformers on hf/: the tokenizer adds BOS like the training documents, NLL of a held-out
    document equals the run's own evaluation of its cached tokens, and greedy generation with the
    KV cache equals generation without it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from lsa_ds.data import open_cache
    from lsa_ds.data.sources import iter_records
    from lsa_ds.eval.forward import hf_logits_fn
    from lsa_ds.eval.perplexity import window_nll
    from lsa_ds.eval.targets import load_model, resolve
    from lsa_ds.recipe import load_recipe

    run = runs / "two"
    recipe = load_recipe(run / "config.yaml")
    cache = open_cache(recipe.data)
    bos, eos = cache.tokenizer.bos_id, cache.tokenizer.eos_id
    tok = AutoTokenizer.from_pretrained(run / "hf")
    model = AutoModelForCausalLM.from_pretrained(run / "hf").eval()
    assert tok("x").input_ids[0] == bos and tok.eos_token_id == eos
    assert model.config.use_cache is True
    gen = GenerationConfig.from_pretrained(run / "hf")
    assert (gen.bos_token_id, gen.eos_token_id) == (bos, eos) and gen.pad_token_id is not None

    texts = [r.text for split, r in iter_records(recipe.data.sources[0]) if split == "eval" and r.text]
    store = cache.store("stdlib", "eval")
    text, cached = texts[0], store.tokens(0)[:200]
    ids = tok(text).input_ids[:200]
    assert ids == [int(t) for t in cached]
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    ours = window_nll(hf_logits_fn(load_model(resolve(str(run)), torch.device("cpu"), torch.float32)),
                      np.asarray(cached)[None], len(cached) - 1, len(cached) - 1)[0]
    assert plain == pytest.approx(ours, abs=1e-5)

    prompt = tok(text[:80], return_tensors="pt")
    with_cache = model.generate(**prompt, max_new_tokens=24, do_sample=False, use_cache=True)
    without = model.generate(**prompt, max_new_tokens=24, do_sample=False, use_cache=False)
    assert with_cache.tolist() == without.tolist() and with_cache.shape[1] > prompt.input_ids.shape[1]


def test_one_number_per_model_through_every_evaluation_path(runs, tmp_path):
    """The run's last in-training evaluation, `lsa eval RUN`, `lsa eval RUN/hf` and `lsa eval` of a
    copy of hf/ elsewhere score the same windows and tokens: the same loss."""
    import shutil

    run = runs / "two"
    _, evals = metrics(run)
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(run / "hf", copy)
    got = {}
    for name, target in (("run", run), ("hf", run / "hf"), ("copy", copy)):
        lsa("eval", str(target), "--tasks", "ppl", "--lengths", "64,128", "--windows", "4", "--out", str(tmp_path / name),
            "--threads", "1", "--no-progress")
        model = json.loads((tmp_path / name / "report.json").read_text())["models"][0]
        got[name] = {p["length"]: p["nll"] for p in model["perplexity"]["lengths"]}
        if name == "copy":
            assert "lsa_data.json" in model["heldout"]
    for n in (64, 128):
        assert got["run"][n] == pytest.approx(evals[-1][f"loss@{n}"], abs=1e-5)
        assert got["hf"][n] == got["run"][n] and got["copy"][n] == pytest.approx(got["run"][n], abs=1e-6)


@pytest.mark.parametrize("case, expect", [
    ("unknown", "unknown key 'train.bogus'"),
    ("duplicate", "duplicate key 'seq_len'"),
    ("type", "train.max_steps"),
    ("base", "base recipe 'missing.yaml' not found"),
    ("rope", "seq_len"),
    ("dynamic", "dynamic"),
    ("batch", "train_batch_size"),
])
def test_bad_recipes_are_one_line_exit_2_and_write_nothing(case, expect, tmp_path, data_cache_dir, capsys):
    out = tmp_path / "runs"
    head = f"run: {{name: bad, output_dir: '{out}'}}\n"
    body = {
        "unknown": "train: {bogus: 1, max_steps: 2}\n",
        "duplicate": "train:\n  seq_len: 64\n  seq_len: 128\n",
        "type": "train: {max_steps: many}\n",
        "base": "base: missing.yaml\n",
        "rope": "train: {seq_len: 512, max_steps: 2}\nmodel: {preset: tiny}\n",
        "dynamic": "train: {seq_len: 256, max_steps: 2}\nmodel: {preset: tiny, rope: {type: dynamic}}\n",
        "batch": f"train: {{max_steps: 2, micro_batch_size: 2, ds_config: '{tmp_path / 'ds.json'}'}}\n",
    }[case]
    (tmp_path / "ds.json").write_text('{"train_batch_size": 64, "zero_optimization": {"stage": 3}}')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(head + body)
    code = cli.main(["train", str(recipe), *sets(*SMALL_DATA, f"data.cache_dir={data_cache_dir}"), "--nproc", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and expect in err, err
    assert not out.exists()


def test_existing_run_directory_is_refused(runs, capsys):
    recipe = runs / "base.yaml"
    code = cli.main(["train", str(recipe), *sets(f"run.output_dir={runs}", "run.name=two", "train.max_steps=1")])
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert (runs / "two" / "hf" / "config.json").exists()


def test_dry_run_prints_recipe_and_deepspeed_config(capsys):
    assert cli.main(["train", "recipes/tiny-cpu.yaml", "--dry-run", "--nproc", "2"]) == 0
    out = capsys.readouterr().out
    assert "seq_len: 128" in out and '"train_batch_size": 32' in out  # 16 windows per rank and '"stage": 3' in out
