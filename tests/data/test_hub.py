"""Hub names (`lsa_ds.data.hub`): a model, its tokenizer and a dataset named `owner/name` are found
offline in a Hugging Face cache fabricated in the layout huggingface_hub writes (refs/<branch>
holding a commit, snapshots/<commit>/ of links into blobs/); a local path always wins; an uncached
name is one line naming the key, the name, the cache searched and the download command. One small
run trains from names alone and `lsa eval` scores the base by its name beside it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sysconfig
from pathlib import Path

import pytest

import lsa_ds
from lsa_ds.data import hub
from lsa_ds.data import sources as S
from lsa_ds.data.tokenizer import load_tokenizer
from lsa_ds.errors import UserError
from lsa_ds.model.config import build_hf_config, checkpoint_dir
from lsa_ds.recipe import load_recipe
from lsa_ds.recipe.schema import DataConfig, SourceConfig
from tests.launch import lsa

MODEL, DATASET, PARTIAL = "lsa-test/tiny-llama", "lsa-test/tiny-text", "lsa-test/config-only"
DEMO_HF = Path(lsa_ds.__file__).parent / "assets" / "demo" / "tiny-cpu-base" / "hf"
# A foreign model as the hub serves one: the committed demo base's weights and HF tokenizer, without
# the files only lsa-ds exports write (lsa_tokenizer.json, lsa_data.json, tokenizer.model).
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
DOCS = 150


def commit(cache: Path, repo_type: str, repo_id: str, files: dict[str, bytes], ref: str = "main") -> Path:
    """One commit of a repository in the hub cache layout; returns its snapshot folder."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    sha = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    snapshot = repo / "snapshots" / sha
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(sha)
    return snapshot


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    """HF_HOME with hub/ holding the model, a partial download of another (config.json only, as
    AutoConfig leaves it) and a parquet dataset of stdlib text in `data/train-*.parquet`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    home = tmp_path_factory.mktemp("hf-home")
    cache = home / "hub"
    commit(cache, "model", MODEL, {f: (DEMO_HF / f).read_bytes() for f in MODEL_FILES})
    commit(cache, "model", PARTIAL, {"config.json": (DEMO_HF / "config.json").read_bytes()})
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8", errors="replace")[:3000] for p in sorted(stdlib.glob("*.py"))[:DOCS]]
    table = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), table)
    commit(cache, "dataset", DATASET, {"data/train-00000-of-00001.parquet": table.getvalue()})
    return home


@pytest.fixture
def cache(hf_home, monkeypatch) -> Path:
    """This process's huggingface_hub searching the fabricated cache (it reads HF_HUB_CACHE once,
    at import; subprocesses get the environment instead)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_home / "hub"


def _snapshot(cache: Path, repo_type: str, repo_id: str) -> Path:
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    return repo / "snapshots" / (repo / "refs" / "main").read_text()


def test_what_counts_as_a_path():
    for name in ("/abs/model", "./model", "../model", "~/model", "runs/a/hf", "data/*.parquet", "a b", "C:\\m"):
        assert hub.looks_like_path(name), name
    for name in ("meta-llama/Llama-2-7b-hf", "gpt2", "owner/name@main", "owner/name@0123abcd"):
        assert not hub.looks_like_path(name), name
    assert hub.download_command("o/d@v1", "dataset") == "hf download o/d --repo-type dataset --revision v1"


def test_model_tokenizer_and_dataset_resolve_by_name(cache):
    snap = _snapshot(cache, "model", MODEL)
    commit_hash = snap.name
    for name in (MODEL, f"{MODEL}@main", f"{MODEL}@{commit_hash}"):
        assert checkpoint_dir(load_recipe(None, ["model.preset=null", f"model.path={name}"])) == snap
    recipe = load_recipe(None, ["model.preset=null", f"model.path={MODEL}", "train.seq_len=64"])
    assert build_hf_config(recipe, 512, 1, 2, 3).hidden_size == 64

    tok = load_tokenizer(DataConfig(tokenizer={"type": "hf", "path": MODEL}))
    assert (tok.kind, tok.path, tok.vocab_size) == ("hf", snap, 512)

    src = SourceConfig(name="hubtext", type="hf", path=DATASET, holdout=0.1)
    recs = [r for _, r in S.iter_records(src)]
    assert len(recs) == DOCS and recs[0].text.startswith('"""')
    assert S.source_fingerprint(src) == S.source_fingerprint(src)
    with pytest.raises(UserError, match="Bad split: test"):
        list(S.iter_records(src.model_copy(update={"split": "test"})))


def test_a_local_path_wins_over_a_cached_name(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = Path(MODEL)
    local.mkdir(parents=True)
    (local / "config.json").write_text((DEMO_HF / "config.json").read_text())
    assert checkpoint_dir(load_recipe(None, ["model.preset=null", f"model.path={MODEL}"])) == local
    # `format` means local files: such a source is never looked up in the cache
    src = SourceConfig(name="files", type="hf", path=DATASET, format="parquet")
    assert S.hf_dataset_folder(src) is None


def test_an_uncached_name_is_one_line_naming_key_cache_and_download(cache):
    def refused(*overrides: str) -> str:
        with pytest.raises(UserError) as e:
            checkpoint_dir(load_recipe(None, ["model.preset=null", *overrides]))
        return str(e.value)

    msg = refused("model.path=lsa-test/absent")
    assert "\n" not in msg and msg.startswith("model.path='lsa-test/absent': no local folder of that name")
    assert str(cache) in msg and "`hf download lsa-test/absent`" in msg and "huggingface-cli download" in msg
    assert "revision 'v9'" in refused("model.path=lsa-test/absent@v9")
    assert "partial download" in refused(f"model.path={PARTIAL}")
    assert refused("model.path=./absent") == "model.path='./absent': folder not found"  # a path stays a path
    assert "goes in model.path" in refused(f"model.init_from={MODEL}")  # init_from is a run directory

    with pytest.raises(UserError, match=r"^data\.tokenizer\.path='lsa-test/absent': .*hf download lsa-test/absent"):
        load_tokenizer(DataConfig(tokenizer={"type": "hf", "path": "lsa-test/absent"}))
    with pytest.raises(UserError, match=r"^source 'x': path='o/absent': .*`hf download o/absent --repo-type dataset`"):
        S.source_fingerprint(SourceConfig(name="x", type="hf", path="o/absent"))


@pytest.mark.deepspeed
def test_train_and_eval_by_name_offline(hf_home, tmp_path, monkeypatch):
    """One rank, two steps at L = 64 from `model.path`, `data.tokenizer.path` and an `hf` source
    given as names, HF_HOME the only hint; `lsa eval` then scores the run and the base by its name.
    An uncached name stops `lsa train` and `lsa eval` with one line and exit 2."""
    for key, value in {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
        monkeypatch.setenv(key, value)  # what the `lsa` subprocesses see
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)  # found through HF_HOME alone
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
run: {{name: by-name, output_dir: '{tmp_path / "runs"}'}}
data:
  sources: [{{name: hubtext, type: hf, path: {DATASET}, holdout: 0.1}}]
  tokenizer: {{type: hf, path: {MODEL}}}
  cache_dir: '{tmp_path / "cache"}'
model: {{preset: null, path: {MODEL}}}
train: {{seq_len: 64, max_steps: 2, micro_batch_size: 2, dist_timeout_s: 60}}
eval: {{windows: 2}}
""")
    lsa("train", str(recipe), "--nproc", "1")
    run = tmp_path / "runs" / "by-name"
    assert (run / "hf" / "model.safetensors").is_file()
    saved = (run / "config.yaml").read_text()
    assert f"path: {MODEL}" in saved and f"path: {DATASET}" in saved  # the recipe keeps names, not snapshots

    out = tmp_path / "eval"
    lsa("eval", str(run), MODEL, "--out", str(out), "--data", str(recipe), "--tasks", "ppl,misalign",
        "--lengths", "32,64", "--windows", "2", "--misalign-samples", "4", "--misalign-variants", "last",
        "--no-progress")
    models = json.loads((out / "report.json").read_text())["models"]
    assert [(m["name"], m["kind"]) for m in models] == [("by-name", "run"), ("tiny-llama", "model")]

    for args in (["train", str(recipe), "--dry-run", "--set", "model.path=lsa-test/absent"],
                 ["eval", "lsa-test/absent", "--out", str(out)]):
        proc = lsa(*args, check=False)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "\n" not in err, proc.stderr
        assert "'lsa-test/absent': no local folder of that name" in err and str(hf_home / "hub") in err, err
        print(err)
