"""`lsa train RECIPE`: prepare the run, then start the ranks (or be one, when already launched).

Outside a launcher, this process checks the recipe and the run directory, writes config.yaml and
ds_config.json, prepares the token cache once, and starts the deepspeed launcher, which runs this
same command on every rank with the resolved config. Launched by deepspeed, torchrun or srun
(LOCAL_RANK in the environment), it is a rank: global rank 0 does the same setup when no `lsa train`
parent did it (the others wait), and every rank trains. On several nodes the run directory and the
token cache must be on a filesystem every node shares (docs/launch.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import yaml

from lsa_ds.cli_help import command_parser
from lsa_ds.errors import UserError
from lsa_ds.model.config import build_hf_config
from lsa_ds.model.estimate import estimate_memory
from lsa_ds.recipe import Recipe, add_recipe_args, recipe_from_args, recipe_to_dict
from lsa_ds.train.checkpoint import CheckpointWriteError
from lsa_ds.train.distributed import default_accelerator, exit_rank, free_port, init_distributed, supervise_rank
from lsa_ds.train.loop import TrainingAborted, train
from lsa_ds.train.setup import check_without_data, setup_run_dir

SETUP_TIMEOUT_ENV = "LSA_SETUP_TIMEOUT_S"
"""How long ranks started without an `lsa train` parent wait for rank 0 to set up the run (default
6 h): it may tokenize a whole corpus first, far longer than `train.dist_timeout_s` allows."""


def _parser() -> argparse.ArgumentParser:
    p = command_parser("train", __doc__.split("\n\n")[0])
    add_recipe_args(p)
    p.add_argument("--dry-run", action="store_true",
                   help="check everything that needs no data (the same checks a real start makes before tokenizing), "
                        "print the resolved recipe, the DeepSpeed config and a per-rank memory estimate, then exit; "
                        "writes nothing")
    p.add_argument("--json", action="store_true",
                   help="with --dry-run: print one JSON object (recipe, ds_config, memory_estimate) instead")
    p.add_argument("--estimate-for", choices=("gpu", "cpu"), default="gpu",
                   help="with --dry-run: estimate memory for GPU ranks (default) or CPU ranks")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true", help="continue the run from its newest complete checkpoint")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: accept a recipe key that differs from the run's config.yaml (repeatable; "
                        "the change is recorded in config-history.jsonl)")
    p.add_argument("--resume-from", type=int, default=None, metavar="STEP",
                   help="with --resume: continue from this step's complete checkpoint instead of the newest "
                        "(newer ones are set aside as checkpoints/stepN-superseded)")
    p.add_argument("--nproc", type=int, default=None, help="ranks per node (default: GPUs, or 2 on CPU)")
    launcher = p.add_argument_group("deepspeed launcher")
    launcher.add_argument("--hostfile", default=None)
    launcher.add_argument("--num_nodes", type=int, default=None)
    launcher.add_argument("--num_gpus", type=int, default=None, help="alias of --nproc")
    launcher.add_argument("--master_addr", default=None)
    launcher.add_argument("--master_port", type=int, default=None)
    # Set by the `lsa train` parent on its ranks' command line, not in their environment: the
    # deepspeed launcher reaches other nodes through pdsh/ssh, which does not carry the environment.
    p.add_argument("--run-ready", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resume-tag", default=None, help=argparse.SUPPRESS)
    return p


def default_nproc() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def launch(args, recipe: Recipe) -> int:
    nproc = args.nproc or args.num_gpus or default_nproc()
    nodes = args.num_nodes or 1
    _, tag = setup_run_dir(recipe, nproc * nodes, args.overwrite, args.resume, args.allow_change, args.resume_from)
    # --log_level warning: the runner and its launcher log every spawned command at INFO otherwise
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--log_level", "warning", "--num_gpus", str(nproc), "--no_local_rank",
           "--master_port", str(args.master_port or free_port())]
    if args.hostfile:
        cmd += ["--hostfile", args.hostfile]
    if args.num_nodes:
        cmd += ["--num_nodes", str(args.num_nodes)]
    if args.master_addr:
        cmd += ["--master_addr", args.master_addr]
    cmd += ["--module", "lsa_ds.cli", "train", str(recipe.run_dir / "config.yaml"), "--run-ready"]
    if tag:
        cmd += ["--resume-tag", tag]
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", default_accelerator()))
    # One BLAS thread pool per rank sized to its share of the cores, not every rank using them all.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # Its own session: Ctrl-C in the terminal reaches this process only, not the deepspeed runner
    # (a KeyboardInterrupt traceback) nor its launcher (which kills the ranks mid-save); the ranks
    # get the signal from _signal_ranks below instead, save, and exit 0.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: _signal_ranks(signum))
    signal.signal(signal.SIGHUP, lambda signum, frame: _signal_ranks(signal.SIGTERM))  # terminal closed
    return proc.wait()


def _signal_ranks(signum: int) -> None:
    """Pass SIGTERM/SIGINT straight to the rank processes, which save and exit 0. (The single-node
    deepspeed runner does not forward signals, and its launcher would report a clean stop as a
    failure.)"""
    # deferred: only a signal to the parent process needs it
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            if "lsa_ds.cli" in child.cmdline() and "deepspeed.launcher" not in " ".join(child.cmdline()):
                child.send_signal(signum)
        except psutil.Error:
            pass


def run_rank(args, recipe: Recipe) -> int:
    """Train as one rank; returns the exit code (a user error is reported here, not by cli.py,
    because the rank leaves through `exit_rank`)."""
    # deferred: the `lsa train` parent process never imports DeepSpeed (its launcher starts the ranks)
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    rank, world = init_distributed(recipe.train.dist_timeout_s)
    try:
        # An `lsa train` parent has set the run up; launched directly (torchrun, srun), rank 0 does it
        tag = args.resume_tag if args.run_ready else _setup_once(args, recipe, rank, world)
        ds_config = json.loads((recipe.run_dir / "ds_config.json").read_text())
        train(recipe, recipe.run_dir, ds_config, tag)
    except UserError as e:
        if rank == 0 or not isinstance(e, CheckpointWriteError):  # raised on every rank alike: rank 0 says it
            print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingAborted as e:
        print(f"error: rank {rank}: {e}", file=sys.stderr)
        return 1
    except (RuntimeError, dist.DistBackendError) as e:
        if "Connection" in str(e) or "timed out" in str(e).lower() or isinstance(e, dist.DistBackendError):
            print(f"error: rank {rank} lost contact with the other ranks ({type(e).__name__}); "
                  f"another rank probably failed, see its output", file=sys.stderr)
            return 1
        raise
    return 0


def _setup_once(args, recipe: Recipe, rank: int, world: int) -> str | None:
    """Rank mode without an `lsa train` parent: global rank 0 checks the recipe, prepares the token
    cache and writes the run directory while the others wait; then every rank checks that it sees
    the result (on several nodes only a shared filesystem makes it visible). Returns the resume tag."""
    # A gloo group of its own: CPU tensors work whatever the training backend (NCCL would need each
    # rank's device set first), and its long timeout covers rank 0 tokenizing a large corpus.
    wait_s = os.environ.get(SETUP_TIMEOUT_ENV, str(6 * 3600))
    if not wait_s.isdigit() or int(wait_s) < 1:
        raise UserError(f"{SETUP_TIMEOUT_ENV}={wait_s!r}: expected a number of seconds")
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=int(wait_s)))
    failed, error, tag = torch.zeros(1), None, [None]
    if rank == 0:
        try:
            _, tag[0] = setup_run_dir(recipe, world, args.overwrite, args.resume, args.allow_change, args.resume_from)
        except BaseException as e:  # tell the others now, rather than leave them waiting for a timeout
            failed[0], error = 1, e
    dist.all_reduce(failed, group=group)
    if error is not None:
        raise error
    if failed.item():
        raise UserError(f"rank {rank}: rank 0 could not set up {recipe.run_dir} (its error says why)")
    blind = torch.tensor([0.0 if (recipe.run_dir / "ds_config.json").is_file() else 1.0])
    dist.all_reduce(blind, group=group)
    if blind.item():
        raise UserError(f"{recipe.run_dir} is not visible to {int(blind.item())} of {world} ranks: several nodes "
                        f"need run.output_dir and data.cache_dir on a filesystem they all share")
    dist.broadcast_object_list(tag, src=0, group=group)  # the checkpoint rank 0 checked (and converted)
    return tag[0]


def dry_run(args, recipe: Recipe) -> int:
    """Check without data; print the resolved recipe, the DeepSpeed config and the memory estimate
    (from the configs alone: no weights, no DeepSpeed)."""
    world = (args.nproc or args.num_gpus or default_nproc()) * (args.num_nodes or 1)
    ds_config = check_without_data(recipe, world)
    hf_config = build_hf_config(recipe, None, None, None, None)  # the vocabulary the checks assume
    estimate = estimate_memory(recipe, hf_config, ds_config, world, target=args.estimate_for)
    if args.json:
        print(json.dumps({"recipe": recipe_to_dict(recipe), "ds_config": ds_config,
                          "memory_estimate": estimate.to_dict()}, indent=2))
        return 0
    print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), end="")
    print(f"# DeepSpeed config for {world} ranks")
    print(json.dumps(ds_config, indent=2))
    print(estimate.render())
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    # ranks started by an `lsa train` parent read the resolved config.yaml, where every key is set:
    # the parent already warned about the user's keys
    recipe = recipe_from_args(args, warn=not args.run_ready and os.environ.get("RANK", "0") == "0")
    if (args.allow_change or args.resume_from is not None) and not args.resume:
        raise UserError("--allow-change and --resume-from: only with --resume")
    if (args.json or args.estimate_for != "gpu") and not args.dry_run:
        raise UserError("--json and --estimate-for: only with --dry-run")
    if args.dry_run:
        return dry_run(args, recipe)
    if "LOCAL_RANK" in os.environ:
        supervise_rank()  # from here on this process is the rank's child; its parent reports how it ends
        exit_rank(run_rank(args, recipe))
    return launch(args, recipe)
