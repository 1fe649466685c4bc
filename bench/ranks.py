"""Starting a benchmark's ranks: the script itself, once per rank, through the deepspeed launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lsa_ds.distributed import free_port


def run_ranks(script: str, nproc: int, args: list[str], result: Path, env: dict[str, str | None] | None = None) -> dict:
    """Run `script --rank ARGS --result RESULT` on `nproc` CPU ranks (1 thread each) and return the
    JSON rank 0 wrote to `result`. `env` adds variables to the environment (None removes one)."""
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--no_local_rank",
           "--master_port", str(free_port()), script, "--rank", *args, "--result", str(result)]
    full = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    subprocess.run(cmd, env=full, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(result.read_text())
