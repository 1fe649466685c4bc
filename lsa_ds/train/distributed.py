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

import logging
import os
import signal
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

SHM_DIR = Path("/dev/shm")


def shm_buffer_path(rank: int) -> Path:
    """The shared-memory file DeepSpeed's CPU all-reduce creates for `rank` (ops/csrc/cpu/comm/shm.cpp)."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def init_distributed(timeout_s: float | None = None) -> tuple[int, int]:
    """`deepspeed.init_distributed` with gloo on CPU and NCCL on GPUs; returns (rank, world size)."""
    # deferred: `lsa --help` imports this module (through quiet); torch and DeepSpeed load only when a rank starts
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


def supervise_rank() -> None:
    """Split this rank in two: the child returns from here and trains; this process waits for it and,
    when it ends abnormally, says in one line which rank died and how (a rank killed by SIGKILL or
    the OOM killer cannot say it itself), then exits with the child's status, so the launcher stops
    the other ranks. SIGTERM/SIGINT/SIGHUP are passed on to the child, which saves and stops."""
    pid = os.fork()
    if pid == 0:
        return
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: os.kill(pid, signum))
    _, status = os.waitpid(pid, 0)  # retried after a handled signal (PEP 475)
    code = os.waitstatus_to_exitcode(status)
    who = f"rank {os.environ.get('RANK', '?')} (local rank {os.environ.get('LOCAL_RANK', '?')}, pid {pid})"
    if code < 0:
        print(f"error: {who} was killed by {signal.Signals(-code).name}; the other ranks stop", file=sys.stderr, flush=True)
        os._exit(128 - code)
    if code not in (0, 2):  # 2: a user error the rank has printed itself
        print(f"error: {who} exited with status {code}", file=sys.stderr, flush=True)
    os._exit(code)


def exit_rank(code: int) -> NoReturn:
    """End a rank process that has finished its work: destroy the process group, flush what is
    buffered, and leave with `os._exit`, skipping interpreter teardown.

    Why: torch's distributed threads (gloo workers, the TCPStore's) can race the interpreter's own
    teardown; about one launch in a hundred on this machine, a rank that had exported its model and
    printed "done" died with "terminate called without an active exception" (SIGABRT), and the
    launcher reported the whole run as failed (exit 250). Every file this project writes is closed
    before this point (checkpoints, metrics, TensorBoard, the HF export), so teardown has nothing left to do.
    """
    # deferred: as above
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def default_accelerator() -> str:
    """DeepSpeed's accelerator name for this machine, when DS_ACCELERATOR does not say."""
    # deferred: as above
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def free_port() -> int:
    """A local TCP port nothing listens on now, for a launch's rendezvous (concurrent launches and
    ones still closing down would collide on a fixed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
