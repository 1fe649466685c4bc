"""A wheel installed into a fresh virtual environment works from any directory: the shipped recipes
are listed and copied, `lsa train NAME` resolves the shipped DeepSpeed template, and `lsa demo`
runs from the committed base model inside the wheel (two steps per stage)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.launch import ENV

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.deepspeed


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    """A fresh venv holding only the built wheel; its dependencies come from this environment's
    site-packages through a .pth line (a plain path: this environment's editable install of lsa_ds,
    a finder registered by a .pth file of its own, is not activated there)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp)
    (wheel,) = tmp.glob("lsa_ds-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("lsa_ds/assets/ds_configs/zero3.json", "lsa_ds/assets/recipes/llama2-7b-4k-to-8k.yaml",
                    "lsa_ds/assets/demo/tiny-cpu-base/hf/model.safetensors"):
        assert shipped in names, shipped
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    (site / "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    py = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    return env_dir


def _lsa(env_dir: Path, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(env_dir / "bin" / "lsa"), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **ENV, "PYTHONPATH": ""}, timeout=900)
    if check:
        assert proc.returncode == 0, f"lsa {' '.join(args)}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_the_wheel_lists_copies_and_resolves_its_shipped_files(wheel_env, tmp_path):
    where = _lsa(wheel_env, tmp_path, "recipes").stdout
    assert "llama2-7b-4k-to-8k" in where and "ablations/cpu-study" in where
    probe = subprocess.run([str(wheel_env / "bin" / "python"), "-c", "import lsa_ds; print(lsa_ds.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True)
    assert str(wheel_env) in probe.stdout  # the wheel's copy, not the checkout
    _lsa(wheel_env, tmp_path, "recipes", "copy", "llama2-7b-4k-to-8k", "my.yaml")
    assert yaml.safe_load((tmp_path / "my.yaml").read_text())["train"]["seq_len"] == 8192
    again = _lsa(wheel_env, tmp_path, "recipes", "copy", "tiny-cpu-more", "my.yaml", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    _lsa(wheel_env, tmp_path, "recipes", "copy", "tiny-cpu-more", "more.yaml")  # base: merged in
    assert "base" not in yaml.safe_load((tmp_path / "more.yaml").read_text())
    dry = _lsa(wheel_env, tmp_path, "train", "tiny-cpu", "--dry-run").stdout
    assert '"stage": 3' in dry and "run:\n  name: tiny-cpu-base" in dry
    assert not (tmp_path / "runs").exists()


def test_the_demo_runs_from_the_wheel(wheel_env, tmp_path):
    short = [f"run.output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "train.max_steps=2",
             "eval.windows=2", "eval.every_steps=null"]
    out = _lsa(wheel_env, tmp_path, "demo", *[a for s in short for a in ("--set", s)], "--no-eval")
    text = out.stdout + out.stderr
    assert "committed base model" in text and "PASS base learned" in text
    init_from = yaml.safe_load((tmp_path / "runs" / "tiny-cpu-extended" / "config.yaml").read_text())["model"]["init_from"]
    assert init_from.startswith(str(wheel_env)) and init_from.endswith("lsa_ds/assets/demo/tiny-cpu-base")
    for run in ("tiny-cpu-extended", "tiny-cpu-extended-lsa", "tiny-cpu-extended-alpha0", "tiny-cpu-more-steps"):
        assert (tmp_path / "runs" / run / "hf" / "config.json").is_file(), run
