"""Two ranks (gloo, CPU) split the windows and samples yet report what one process reports."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lsa_ds.eval.forward import hf_logits_fn
from lsa_ds.eval.misalignment import measure_misalignment
from lsa_ds.eval.perplexity import perplexity_at
from lsa_ds.train.distributed import free_port

LENGTHS, K, L, SAMPLES = [8, 16], 4, 16, 5


def _metrics(model, windows) -> dict:
    inner, rows = hf_logits_fn(model), [0]

    def fn(ids, keep):  # counts the rows this process runs through the model
        rows[0] += len(ids)
        return inner(ids, keep)

    ppl = perplexity_at(fn, windows, LENGTHS, K, batch_tokens=20)
    mis = measure_misalignment(fn, windows, L, "last", SAMPLES, seed=1, batch_tokens=2 * L)
    return {"nll": [ppl[n].nll.mean for n in LENGTHS], "windows": [ppl[n].nll.n for n in LENGTHS],
            "sce": mis.sce.mean, "skl": mis.skl.mean, "samples": mis.sce.n, "rows": rows[0]}


def _rank(rank: int, world: int, port: int, model, windows: np.ndarray, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # forked from a process that used intra-op threads: stay single-threaded
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _metrics(model, windows)
        with open(f"{out}.{rank}", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tiny, tmp_path):
    model, tok = tiny
    windows = np.random.default_rng(5).integers(4, tok.vocab_size, size=(7, 17))  # 7: ranks get 4 and 3 (+1 dummy)
    single = _metrics(model, windows)
    assert single["rows"] == 7 * len(LENGTHS) + 2 * SAMPLES
    out = str(tmp_path / "result")
    # fork: the children inherit the imported modules and the loaded model (spawn re-imports
    # torch and transformers in each child, ~15 s on a small machine)
    mp.start_processes(_rank, args=(2, free_port(), model, windows, out), nprocs=2, join=True, start_method="fork")
    for rank in range(2):
        got = json.loads(open(f"{out}.{rank}").read())
        assert got["windows"] == [7, 7] and got["samples"] == SAMPLES
        assert got["rows"] == 4 * len(LENGTHS) + 2 * 3  # ceil(7/2) windows, ceil(5/2) samples: the work is split
        assert got["nll"] == pytest.approx(single["nll"], abs=1e-5)
        assert got["sce"] == pytest.approx(single["sce"], abs=1e-5)
        assert got["skl"] == pytest.approx(single["skl"], abs=1e-6)
