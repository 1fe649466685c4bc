"""The metrics the trainer will call in training, on a real 2-rank ZeRO-3 engine (slow: DeepSpeed launch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lsa_ds.train.distributed import free_port

pytestmark = pytest.mark.deepspeed


def test_metrics_on_a_zero3_engine_equal_the_plain_model(tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "result.json"
    script = Path(__file__).with_name("zero3_eval_rank.py")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                           str(free_port()), str(script), str(out)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["local_numel"] == 0  # parameters really are partitioned outside forward
    assert res["zero3"]["nll"] == pytest.approx(res["plain"]["nll"], abs=1e-5)
    assert res["zero3"]["last_sce"] == pytest.approx(res["plain"]["last_sce"], abs=1e-5)
    assert res["zero3"]["overlap_skl"] == pytest.approx(res["plain"]["overlap_skl"], abs=1e-6)
