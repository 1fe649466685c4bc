"""Process-group start for every rank this project launches (training, benchmarks, test ranks).

DeepSpeed's CPU accelerator builds a shared-memory all-reduce op at `init_distributed`: each rank
creates `/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>` (66 MiB) and maps every
peer's. DeepSpeed 0.19.8 never unlinks them, and /dev/shm is RAM: each launch on a free port leaked
132 MiB for two ranks (we found 15 GiB of them after a day of tests on a 24 GiB machine). Once every
rank has mapped every buffer (a barrier after init guarantees it), the names are no longer needed,
so each rank unlinks its own at once: the memory is freed when the processes exit, even if they are
killed.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

SHM_DIR = Path("/dev/shm")


def shm_buffer_path(rank: int) -> Path:
    """The shared-memory file DeepSpeed's CPU all-reduce creates for `rank` (ops/csrc/cpu/comm/shm.cpp)."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def init_distributed(timeout_s: float | None = None) -> tuple[int, int]:
    """`deepspeed.init_distributed` with gloo on CPU and NCCL on GPUs; returns (rank, world size)."""
    import deepspeed
    import torch.distributed as dist

    accelerator = os.environ.setdefault("DS_ACCELERATOR", default_accelerator())
    kwargs = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    deepspeed.init_distributed(dist_backend="gloo" if accelerator == "cpu" else "nccl", **kwargs)
    rank = dist.get_rank()
    if accelerator == "cpu":
        dist.barrier()  # every rank has opened every peer's buffer
        shm_buffer_path(rank).unlink(missing_ok=True)
    return rank, dist.get_world_size()


def default_accelerator() -> str:
    """DeepSpeed's accelerator name for this machine, when DS_ACCELERATOR does not say."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def free_port() -> int:
    """A local TCP port nothing listens on now, for a launch's rendezvous (concurrent launches and
    ones still closing down would collide on a fixed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
