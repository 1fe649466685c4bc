"""Reading a Dockerfile and a .dockerignore without a docker engine, for tests/test_docker.py:
instructions with continuations joined and ARG defaults substituted, RUN commands split into shell
commands, pip install lines taken apart, and BuildKit's .dockerignore matching rules."""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PIN_FILE = "requirements/constraints.txt"


@dataclass
class Instruction:
    keyword: str
    args: str
    workdir: str  # WORKDIR in force when the instruction runs


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with line continuations joined and comment lines dropped (also inside a continued
    instruction, as Docker does); `${ARG}`/`$ARG` replaced by the ARG's default where it has one."""
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a line continuation"

    defaults: dict[str, str] = {}
    workdir = "/"
    out: list[Instruction] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG":
            name, eq, value = args.strip().partition("=")
            if eq:
                defaults[name] = value.strip().strip('"')
        args = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m[1] or m[2], m[0]), args.strip())
        if keyword == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, args))
        out.append(Instruction(keyword, args, workdir))
    return out


def arg_defaults() -> dict[str, str]:
    out = {}
    for ins in parse_dockerfile():
        if ins.keyword == "ARG":
            name, eq, value = ins.args.partition("=")
            if eq:
                out[name] = value.strip('"')
    return out


def shell_commands(run: str) -> list[list[str]]:
    """A RUN's shell text split into simple commands (at &&, ||, ;, |) as token lists."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, cmd = [], []
    for tok in lexer:
        if tok and set(tok) <= set(";&|"):
            if cmd:
                commands.append(cmd)
            cmd = []
        else:
            cmd.append(tok)
    if cmd:
        commands.append(cmd)
    return commands


@dataclass
class PipInstall:
    prefix: list[str]  # what comes before pip (env -u PIP_CONSTRAINT, VAR=value ...)
    constraints: list[str] = field(default_factory=list)
    requirement_files: list[str] = field(default_factory=list)
    editable: list[str] = field(default_factory=list)
    requirements: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    workdir: str = "/"


_PIP_VALUE_OPTIONS = {"-c", "--constraint", "-r", "--requirement", "-e", "--editable", "-i", "--index-url",
                      "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix", "--root"}


def pip_installs() -> list[PipInstall]:
    found = []
    for ins in parse_dockerfile():
        if ins.keyword != "RUN":
            continue
        for cmd in shell_commands(ins.args):
            # `pip install ...`, `pip3 install`, `python -m pip install`, possibly after `env ...` / `if ...; then`
            for i, tok in enumerate(cmd[:-1]):
                if posixpath.basename(tok) in ("pip", "pip3") and cmd[i + 1] == "install":
                    start = i - 2 if i >= 2 and cmd[i - 1] == "-m" else i
                    break
            else:
                continue
            pi = PipInstall(prefix=cmd[:start], workdir=ins.workdir)
            rest = iter(cmd[i + 2:])
            for tok in rest:
                opt, eq, val = tok.partition("=")
                if tok.startswith("-") and opt in _PIP_VALUE_OPTIONS:
                    value = val if eq else next(rest)
                    if opt in ("-c", "--constraint"):
                        pi.constraints.append(value)
                    elif opt in ("-r", "--requirement"):
                        pi.requirement_files.append(value)
                    elif opt in ("-e", "--editable"):
                        pi.editable.append(value)
                    else:
                        pi.flags.append(tok)
                elif tok.startswith("-"):
                    pi.flags.append(tok)
                else:
                    pi.requirements.append(tok)
            found.append(pi)
    return found


def read_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / PIN_FILE).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{PIN_FILE}: not an exact pin: {line}"
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins



def _dockerignore_regex(pattern: str) -> re.Pattern:
    """moby/patternmatcher's translation: `**` any number of path segments, `*` and `?` within one."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i)
            out += pattern[i:end + 1]
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(f"^{out}$")


def dockerignore_excludes(rel_path: str, lines: list[str] | None = None) -> bool:
    """Whether the build context leaves `rel_path` out: the last matching pattern decides, and a pattern
    also matches a path when it matches one of its parent folders (BuildKit's MatchesOrParentMatches)."""
    if lines is None:
        lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        patterns.append((negate, _dockerignore_regex(pat)))
    parts = rel_path.split("/")
    candidates = [rel_path] + ["/".join(parts[:k]) for k in range(1, len(parts))]
    excluded = False
    for negate, rx in patterns:
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded
