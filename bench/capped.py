"""Ranks under a memory cap and a time limit, for the benches that push L until a step no longer fits.

bench/ranks.py's `run_ranks` waits for the launch and raises when it fails; a point that runs out
of memory there would swap or OOM-kill the machine, which other jobs share. Here a watchdog polls
the resident set of every process the launch started and kills the launch's process group when one
rank passes the per-rank cap (the point then counts as "does not fit"), when the launch outlives
its time limit, or when the machine's available memory runs low whatever the cap says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from ranks import launch_command  # bench/ranks.py, beside this script

from lsa_ds.train.distributed import SHM_DIR

MIN_AVAILABLE_MIB = 3072
"""Kill a launch when the machine has less than this available: the last guard against swapping."""


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += tree.get(p, [])
    return out


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return 0.0


def _available_mib() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("MemAvailable"))


def run_capped(script: str, nproc: int, args: list[str], result: Path, cap_mib: float, timeout_s: float,
               env: dict[str, str | None] | None = None, log: Path | None = None) -> dict:
    """Run `script --rank ARGS --result RESULT` on `nproc` CPU ranks (`ranks.launch_command`), like
    ranks.run_ranks. Returns rank 0's JSON plus `status` "ok", or `status` "cap" (a rank's resident
    set passed `cap_mib`), "timeout", "low-memory" or "error" (with the rank's last output lines),
    and always `wall_s` and `watch_rss_mib` (the largest resident set the watchdog saw per process)."""
    result.unlink(missing_ok=True)
    cmd, full, port = launch_command(script, nproc, args, result, env)
    log = log or result.with_suffix(".log")
    t0, status, seen = time.perf_counter(), None, 0.0
    with open(log, "w") as out:
        # its own session: the watchdog kills exactly this launch's process group, nothing else
        proc = subprocess.Popen(cmd, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            worst = max((_rss_mib(p) for p in _descendants(proc.pid)), default=0.0)
            seen = max(seen, worst)
            if worst > cap_mib:
                status = "cap"
            elif time.perf_counter() - t0 > timeout_s:
                status = "timeout"
            elif _available_mib() < MIN_AVAILABLE_MIB:
                status = "low-memory"
            if status:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    # A rank killed at the cap (or one that never reached init_distributed's unlink, like the
    # Trainer peer's) leaves DeepSpeed's 66 MiB CPU all-reduce buffers in /dev/shm, which is RAM.
    for leftover in SHM_DIR.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
        leftover.unlink(missing_ok=True)
    if status is None and proc.returncode == 0 and result.is_file():
        return {**json.loads(result.read_text()), "status": "ok", "wall_s": wall, "watch_rss_mib": seen}
    tail = log.read_text(errors="replace").splitlines()[-8:] if status is None else []
    return {"status": status or "error", "wall_s": wall, "watch_rss_mib": seen, "log_tail": tail}
