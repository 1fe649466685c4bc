"""The docker image: lint, one pin file shared with the README install, build context, run script.

No docker engine is needed: the Dockerfile is parsed and `.dockerignore` evaluated with Docker's own
matching rules (tests/dockerfile.py), and launch/docker-run.sh is exercised in its dry-run mode. The
CPU variant of the same Dockerfile is built and run with buildah in tests/test_container.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import posixpath
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

from tests.dockerfile import (
    DOCKERFILE,
    PIN_FILE,
    ROOT,
    Instruction,
    arg_defaults,
    dockerignore_excludes,
    parse_dockerfile,
    pip_installs,
    read_pins,
    shell_commands,
)

RUN_SCRIPT = ROOT / "launch" / "docker-run.sh"
BUILD_SCRIPT = ROOT / "scripts" / "build-container.sh"
BIN = Path(sys.executable).parent


def _tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -c {PIN_FILE} -e .[dev])")
    return path


# --- linters ---------------------------------------------------------------------------------------


def test_hadolint_dockerfile_is_clean():
    hadolint = _tool("hadolint")
    r = subprocess.run([str(hadolint), "--config", str(ROOT / "docker" / ".hadolint.yaml"), str(DOCKERFILE)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shellcheck_docker_scripts_are_clean():
    shellcheck = _tool("shellcheck")
    scripts = [RUN_SCRIPT, BUILD_SCRIPT, ROOT / ".ci" / "run", ROOT / "docker" / "entrypoint.sh",
               ROOT / "docker" / "lsa-sshd.sh"]
    r = subprocess.run([str(shellcheck), *map(str, scripts)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


# --- the image installs from the shared pin file -----------------------------------------------------


def test_dockerfile_copies_the_pin_file_and_every_pip_install_uses_it():
    instructions = parse_dockerfile()
    copied_to = set()
    for ins in instructions:
        if ins.keyword == "COPY":
            *srcs, dest = [a for a in shlex.split(ins.args) if not a.startswith("--")]
            if PIN_FILE in srcs:
                copied_to.add(posixpath.normpath(posixpath.join(ins.workdir, dest)))
    assert copied_to, f"the Dockerfile does not COPY {PIN_FILE}"

    installs = pip_installs()
    assert installs, "no pip install in the Dockerfile's RUN instructions"
    project = [pi for pi in installs if "." in pi.editable or "." in pi.requirements]
    assert project, "no RUN installs the project itself (pip install ... -e .)"
    for pi in installs:
        pin_file_args = [c for c in pi.constraints if c.endswith(PIN_FILE)]
        assert pin_file_args, f"pip install without -c {PIN_FILE}: {pi}"
        for c in pin_file_args:  # the path pip opens is the copied pin file
            assert posixpath.normpath(posixpath.join(pi.workdir, c)) in copied_to, (c, pi.workdir, copied_to)
        # NGC's PIP_CONSTRAINT (the base image's own pins) must not override the shared pin file.
        unset = any(pi.prefix[k:k + 3] == ["env", "-u", "PIP_CONSTRAINT"] for k in range(len(pi.prefix)))
        assert unset, f"NGC's PIP_CONSTRAINT still applies: {pi}"


def test_dockerfile_keeps_the_image_torch():
    installs = pip_installs()
    # Where a RUN writes files (`... > path`), and what the command writing it says.
    written: dict[str, str] = {}
    for ins in parse_dockerfile():
        if ins.keyword == "RUN":
            for cmd in shell_commands(ins.args):
                if ">" in cmd[:-1]:
                    written[cmd[cmd.index(">") + 1]] = " ".join(cmd)
    for pi in installs:
        names = {canonicalize_name(Requirement(r).name) for r in pi.requirements if r != "."}
        assert "torch" not in names, f"the Dockerfile installs torch: {pi}"
        risky = {"-U", "--upgrade", "--force-reinstall", "-I", "--ignore-installed"} & set(pi.flags)
        assert not risky, f"{risky} could replace the image's torch: {pi}"
        # A second constraint, written earlier in the build, pins torch to the installed version.
        torch_pins = [c for c in pi.constraints if c in written and "torch" in written[c]]
        assert torch_pins, f"no constraint pinning the image's torch: {pi.constraints}, written: {list(written)}"
    for path, cmd in written.items():
        if "torch" in cmd and path in {c for pi in installs for c in pi.constraints}:
            assert 'version("torch")' in cmd or "torch.__version__" in cmd, cmd


def test_dockerfile_never_contradicts_the_pin_file():
    pins = read_pins()
    assert "torch" not in pins, f"torch must stay unpinned in {PIN_FILE} (CPU here, the image's CUDA build there)"
    for pi in pip_installs():
        for r in pi.requirements:
            if r == ".":
                continue
            req = Requirement(r)
            name = canonicalize_name(req.name)
            for spec in req.specifier:
                if name in pins:
                    assert spec.operator == "==" and Version(spec.version) == Version(pins[name]), (
                        f"the Dockerfile asks for {r}, {PIN_FILE} pins {name}=={pins[name]}")
                else:  # anything the pin file does not cover is pinned in the Dockerfile itself
                    assert spec.operator == "==", f"unpinned install in the Dockerfile: {r}"
            if name not in pins:
                assert req.specifier, f"unpinned install in the Dockerfile: {r}"


def test_dockerfile_image_basics():
    instructions = parse_dockerfile()

    def by_kw(keyword: str) -> list[Instruction]:
        return [i for i in instructions if i.keyword == keyword]

    base = by_kw("FROM")[0].args
    assert base.startswith("nvcr.io/nvidia/pytorch:") and not base.endswith(":latest"), base
    defaults = arg_defaults()
    assert defaults["FLASH_ATTN"] == "0"
    assert re.fullmatch(r"\d+(\.\d+)+(\.post\d+)?", defaults["FLASH_ATTN_VERSION"]), defaults["FLASH_ATTN_VERSION"]
    flash = [pi for pi in pip_installs() if any(r.startswith("flash-attn") for r in pi.requirements)]
    assert flash and "--no-build-isolation" in flash[0].flags
    assert any("MAX_JOBS=" in tok for tok in flash[0].prefix)
    user = by_kw("USER")[-1].args
    assert user.split(":")[0] not in ("0", "root"), user
    assert by_kw("WORKDIR")[-1].args == "/workspace"
    entrypoint = json.loads(by_kw("ENTRYPOINT")[-1].args)
    assert entrypoint[-1] == "lsa", entrypoint
    env = " ".join(i.args for i in by_kw("ENV"))
    for var in ("PYTHONUNBUFFERED=1", "PIP_NO_CACHE_DIR=1", "HF_HOME=/workspace/.cache/"):
        assert var in env, var
    hf_home = re.search(r"HF_HOME=(\S+)", env)[1]
    volumes = json.loads(by_kw("VOLUME")[-1].args)
    assert any(hf_home == v or hf_home.startswith(v + "/") for v in volumes), (hf_home, volumes)
    apt = " ".join(i.args for i in by_kw("RUN") if "apt-get install" in i.args)
    for pkg in ("pdsh", "openssh-client", "openssh-server"):
        assert pkg in apt.split(), pkg


def test_one_dockerfile_for_ngc_and_the_cpu_variant():
    """BASE_IMAGE defaults to NGC; the CPU build (scripts/build-container.sh) changes only build args, and
    the wheelhouse args have no default, so a plain `docker build` installs from PyPI as before."""
    instructions = parse_dockerfile()
    declared = {}
    for ins in instructions:
        if ins.keyword == "ARG":
            name, eq, value = ins.args.partition("=")
            declared[name] = value if eq else None
    assert declared["BASE_IMAGE"].startswith("nvcr.io/nvidia/pytorch:")
    assert declared["PIP_FIND_LINKS"] is None and declared["PIP_NO_INDEX"] is None
    env = " ".join(i.args for i in instructions if i.keyword == "ENV")
    assert "PIP_FIND_LINKS" not in env and "PIP_NO_INDEX" not in env, "the wheelhouse must not stay in the image's env"
    # the wheelhouse args come before the first pip install (they reach every RUN after their ARG)
    first_pip = next(k for k, i in enumerate(instructions) if i.keyword == "RUN" and "pip install" in i.args)
    arg_at = {i.args.partition("=")[0]: k for k, i in enumerate(instructions) if i.keyword == "ARG"}
    assert arg_at["PIP_FIND_LINKS"] < first_pip and arg_at["PIP_NO_INDEX"] < first_pip
    # every --build-arg the script passes is an ARG of the Dockerfile
    passed = set(re.findall(r"--build-arg (\w+)=", BUILD_SCRIPT.read_text()))
    assert {"BASE_IMAGE", "PIP_FIND_LINKS", "PIP_NO_INDEX"} <= passed
    assert passed <= set(declared), passed - set(declared)


def test_dockerfile_copies_the_package_data_not_the_root_symlinks():
    sources = _copy_sources()
    assert "lsa_ds" in sources
    for link in ("recipes", "ds_configs", "demo"):
        assert link not in sources, f"{link} at the root is a symlink into lsa_ds/assets; COPY lsa_ds/assets/{link}"
    assert (ROOT / "lsa_ds" / "assets" / "recipes" / "tiny-cpu.yaml").is_file()


# --- the pin file is what the README install installed -----------------------------------------------


def test_pin_file_matches_this_environment():
    """scripts/install.sh installed this venv with `-c requirements/constraints.txt`; the image installs
    with the same file. Every pin must equal what is installed here, so the two cannot drift."""
    drift = {}
    for name, version in read_pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            drift[name] = (version, "not installed")
            continue
        if Version(installed) != Version(version):
            drift[name] = (version, installed)
    assert not drift, f"{PIN_FILE} pin vs installed: {drift}"


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_every_dependency_is_pinned_except_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        deps += extra
    pins = read_pins()
    names = {canonicalize_name(Requirement(d).name) for d in deps}
    missing = sorted(names - set(pins) - {"torch"})
    assert not missing, f"dependencies of pyproject.toml without a pin in {PIN_FILE}: {missing}"
    for d in deps:  # and every pin satisfies pyproject's own range
        req = Requirement(d)
        name = canonicalize_name(req.name)
        if name in pins:
            assert req.specifier.contains(pins[name], prereleases=True), (d, pins[name])


# --- .dockerignore ---------------------------------------------------------------------------------


def test_dockerignore_matcher_follows_docker_rules():
    rules = ["*", "!src", "**/__pycache__", "!keep/me.txt"]
    assert dockerignore_excludes("a.txt", rules)
    assert not dockerignore_excludes("src/x/y.py", rules)
    assert dockerignore_excludes("src/x/__pycache__/y.pyc", rules)
    assert dockerignore_excludes("keep/other.txt", rules)
    assert not dockerignore_excludes("keep/me.txt", rules)
    assert dockerignore_excludes("runs/a/b", ["runs/"])
    assert not dockerignore_excludes("src/runs", ["runs"])


def _copy_sources() -> list[str]:
    sources = []
    for ins in parse_dockerfile():
        if ins.keyword in ("COPY", "ADD"):
            opts = [a for a in shlex.split(ins.args) if a.startswith("--")]
            if any(o.startswith("--from") for o in opts):
                continue  # from another stage or image, not the build context
            *srcs, _ = [a for a in shlex.split(ins.args) if not a.startswith("--")]
            sources += srcs
    return sources


def test_dockerignore_keeps_what_the_dockerfile_copies_and_drops_the_rest():
    sources = _copy_sources()
    assert PIN_FILE in sources and "pyproject.toml" in sources
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"the Dockerfile COPYs {src}, which does not exist"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if "__pycache__" in rel or rel.endswith(".pyc"):
                assert dockerignore_excludes(rel), rel
                continue
            assert not dockerignore_excludes(rel), f".dockerignore leaves out {rel}, which the Dockerfile COPYs"
    for rel in (".venv/bin/python", "runs/x/metrics.jsonl", ".git/HEAD", ".cache/lsa-ds/x.bin", "bench/out/r.json",
                "data/corpus.jsonl", "lsa_ds.egg-info/PKG-INFO", "dist/lsa_ds-0.1.0-py3-none-any.whl",
                "tests/test_docker.py", ".pytest_cache/v/cache/nodeids",
                ".cache/container/wheelhouse-0123/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                ".cache/container/rootfs-bookworm-0123.tar", "recipes/tiny-cpu.yaml"):
        assert dockerignore_excludes(rel), f".dockerignore lets {rel} into the build context"


# --- launch/docker-run.sh --------------------------------------------------------------------------


def _run_script(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LSA_", "NCCL_")) and k != "HF_TOKEN"}
    base.update(HOME=str(tmp_path / "home"), LSA_DATA=str(tmp_path / "data"), LSA_RUNS=str(tmp_path / "runs"),
                LSA_CACHE=str(tmp_path / "cache"), LSA_HF_CACHE=str(tmp_path / "hf"),
                LSA_RECIPES=str(ROOT / "recipes"))
    base.update(env)
    return subprocess.run(["bash", str(RUN_SCRIPT), *args], capture_output=True, text=True, env=base,
                          cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=60)


def _mounts(cmd: list[str]) -> dict[str, str]:
    return {cmd[i + 1].split(":")[1]: cmd[i + 1] for i, tok in enumerate(cmd[:-1]) if tok == "-v"}


def test_docker_run_dry_run_prints_the_full_command(tmp_path):
    lsa_args = ["train", "recipes/tiny-cpu.yaml", "--nproc", "8", "--set", "run.name=with space"]
    r = _run_script(lsa_args, tmp_path, LSA_DRY_RUN="1", LSA_IMAGE="lsa-ds:test", HF_TOKEN="secret-value",
                    NCCL_DEBUG="INFO")
    assert r.returncode == 0, r.stderr
    text = r.stdout.strip()
    cmd = shlex.split(text)
    assert cmd[:2] == ["docker", "run"]
    assert "--gpus all" in text and "--ipc=host" in text and "--shm-size" in cmd
    assert "memlock=-1" in cmd and "stack=67108864" in cmd and "--network" in cmd
    assert cmd[cmd.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    mounts = _mounts(cmd)
    assert mounts["/workspace/data"] == f"{tmp_path / 'data'}:/workspace/data"
    assert mounts["/workspace/runs"] == f"{tmp_path / 'runs'}:/workspace/runs"
    assert mounts["/workspace/.cache"] == f"{tmp_path / 'cache'}:/workspace/.cache"
    assert mounts["/workspace/.cache/huggingface"] == f"{tmp_path / 'hf'}:/workspace/.cache/huggingface"
    assert mounts["/workspace/recipes"].endswith(":ro")
    assert "/workspace/hostfile" not in mounts and not any(m.endswith("/.ssh") for m in mounts)
    # secrets by name only
    assert "HF_TOKEN" in cmd and "NCCL_DEBUG" in cmd and "secret-value" not in text
    # the image, then exactly the lsa arguments
    assert cmd[-len(lsa_args) - 1:] == ["lsa-ds:test", *lsa_args]
    # a dry run has no side effects
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_docker_run_without_gpus_for_the_cpu_image(tmp_path):
    r = _run_script(["train", "tiny-cpu", "--nproc", "2"], tmp_path, LSA_DRY_RUN="1", LSA_GPUS="none",
                    LSA_IMAGE="lsa-ds:cpu")
    assert r.returncode == 0, r.stderr
    cmd = shlex.split(r.stdout)
    assert "--gpus" not in cmd and "none" not in cmd
    assert cmd[:4] == ["docker", "run", "--rm", "--init"] and "--ipc=host" in cmd
    assert cmd[-5:] == ["lsa-ds:cpu", "train", "tiny-cpu", "--nproc", "2"]


def test_docker_run_multi_node_mounts_hostfile_and_ssh(tmp_path):
    (tmp_path / "hostfile").write_text("node1 slots=8\nnode2 slots=8\n")
    r = _run_script(["train", "recipes/x.yaml", "--hostfile", "/workspace/hostfile", "--num_nodes", "2"], tmp_path,
                    LSA_DRY_RUN="1", LSA_HOSTFILE="hostfile", LSA_SSH_DIR=str(tmp_path / "ssh"))
    assert r.returncode == 0, r.stderr
    cmd = shlex.split(r.stdout)
    mounts = _mounts(cmd)
    assert mounts["/workspace/hostfile"] == f"{tmp_path / 'hostfile'}:/workspace/hostfile:ro"
    assert mounts["/home/lsa/.ssh"] == f"{tmp_path / 'ssh'}:/home/lsa/.ssh:ro"
    assert cmd[cmd.index("--network") + 1] == "host"

    r = _run_script(["sshd"], tmp_path, LSA_DRY_RUN="1", LSA_IMAGE="img")
    assert r.returncode == 0, r.stderr
    cmd = shlex.split(r.stdout)
    assert "-d" in cmd and cmd[-2:] == ["img", "lsa-sshd"]
    assert cmd[cmd.index("--entrypoint") + 1] == "/usr/local/bin/lsa-entrypoint"
    assert "/home/lsa/.ssh" in _mounts(cmd)


def test_docker_run_without_args_prints_usage_and_exits_2(tmp_path):
    r = _run_script([], tmp_path)
    assert r.returncode == 2
    assert "usage:" in r.stderr and "LSA_DRY_RUN" in r.stderr
    assert not (tmp_path / "data").exists()


def test_lsa_sshd_passes_the_container_environment_to_logins(tmp_path):
    """docker/lsa-sshd.sh writes an sshd config whose SetEnv lines carry the environment to ssh logins
    (sshd itself is replaced by a stub that prints the config it was given)."""
    if not any((Path(d) / "ssh-keygen").exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("ssh-keygen is not installed")
    stub = tmp_path / "sshd"
    stub.write_text('#!/usr/bin/env bash\nwhile [ "$#" -gt 0 ]; do [ "$1" = -f ] && cat "$2"; shift; done\n')
    stub.chmod(0o755)
    env = dict(os.environ, TMPDIR=str(tmp_path), LSA_SSHD_BIN=str(stub), LSA_SSH_PORT="2299", NCCL_SOCKET_IFNAME="eth0",
               HF_HOME="/workspace/.cache/huggingface", WITH_SPACE="a b")
    r = subprocess.run(["bash", str(ROOT / "docker" / "lsa-sshd.sh")], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "Port 2299" in lines and "PasswordAuthentication no" in lines and "UsePAM no" in lines
    assert "SetEnv NCCL_SOCKET_IFNAME=eth0" in lines
    assert "SetEnv HF_HOME=/workspace/.cache/huggingface" in lines
    assert f"SetEnv PATH={os.environ['PATH']}" in lines or any(c.isspace() for c in os.environ["PATH"])
    assert not any(line.startswith(("SetEnv WITH_SPACE", "SetEnv HOME=")) for line in lines)
