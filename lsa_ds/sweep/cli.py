"""`lsa sweep ABLATION.yaml`: expand an ablation grid over a base recipe into runs, then train them
one after another (default), print their `lsa train` commands (--print), write a SLURM array job
(--slurm), or gather their results into one comparison table and plot (--report).

An ablation file (docs/sweep.md has the full format):

    base: ../tiny-cpu-extend.yaml    # the recipe every point starts from (relative to this file)
    name: cpu-mini                   # run names <name>-<label>; sweep folder <output_dir>/sweeps/<name>
    requires: [../tiny-cpu.yaml]     # recipes trained first when not finished (e.g. the base model)
    set: {align.enabled: true}       # overrides for every point
    grid:                            # the cartesian product of these lists; a list of such
      align.alpha: [0, 0.1, 0.3]     #   mappings is the union of their products
    eval: [--tasks, ppl,misalign]    # after each run: `lsa eval RUN <these args>` (omit: no eval)

Every point goes through the loader `lsa train` uses (`base:` inheritance, `--set` semantics,
strict validation), so a bad key or value is refused in one line naming the ablation file before
anything is written or run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from lsa_ds.cli_help import command_parser
from lsa_ds.errors import UserError
from lsa_ds.recipe import recipe_changes
from lsa_ds.sweep.arms import check_baseline
from lsa_ds.sweep.report import write_sweep_report
from lsa_ds.sweep.spec import Point, Sweep, load_sweep

SLURM_SCRIPT = "slurm-array.sh"


# ------------------------------------------------------------------------------------ files
def _shown(path: Path) -> str:
    """A path as the user would type it from here (relative when under the working directory)."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path.resolve())
    except ValueError:
        return str(path)


def train_command(point: Point) -> list[str]:
    """`lsa train RECIPE --set ...` for a point on its source recipe."""
    return ["lsa", "train", _shown(point.source), *[a for o in point.overrides for a in ("--set", o)]]


def write_recipes(sweep: Sweep, folder: Path) -> list[Path]:
    """Each point's resolved recipe (its non-default keys) as a standalone file `lsa train` loads;
    plus sweep.json. The run's config.yaml records every key."""
    (folder / "recipes").mkdir(parents=True, exist_ok=True)
    files = []
    for p in sweep.points:
        file = folder / "recipes" / f"{p.name}.yaml"
        head = (f"# Point {p.index} of sweep {sweep.name} ({_shown(sweep.path)}), written by `lsa sweep`.\n"
                f"# {_shown(sweep.base)} with: {' '.join(p.overrides)}\n")
        # Only what differs from the defaults: `lsa train` then warns about a key set without effect
        # only when the sweep really set it (a fully resolved file "sets" every key).
        file.write_text(head + yaml.safe_dump(p.recipe.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
        files.append(file)
    manifest = {"sweep": sweep.name, "ablation": str(sweep.path), "base": str(sweep.base), "grid": sweep.grids,
                "points": [{"name": p.name, "values": p.values, "overrides": p.overrides, "run_dir": str(p.run_dir),
                            "recipe": str(f)} for p, f in zip(sweep.points, files)],
                "requires": [{"name": r.name, "recipe": str(r.source), "run_dir": str(r.run_dir)} for r in sweep.requires]}
    (folder / "sweep.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return files


def slurm_script(sweep: Sweep, files: list[Path], folder: Path) -> str:
    directives = [f"#SBATCH --job-name={sweep.name}", f"#SBATCH --output={_shown(folder)}/logs/%A_%a.out",
                  *[f"#SBATCH --{k}={v}" for k, v in sweep.spec.slurm.items()]]
    recipes = "\n".join(f"  {shlex.quote(_shown(f))}  # {i}" for i, f in enumerate(files))
    last = len(files) - 1
    return f"""#!/bin/bash
{chr(10).join(directives)}
# SLURM array job of sweep {sweep.name} ({_shown(sweep.path)}), written by `lsa sweep --slurm`:
# one array task per point, each running launch/slurm.sbatch on its resolved recipe.
#   sbatch --array=0-{last} {_shown(folder / SLURM_SCRIPT)}
set -euo pipefail
cd {shlex.quote(str(Path.cwd()))}
RECIPES=(
{recipes}
)
TASK="${{SLURM_ARRAY_TASK_ID:?submit with sbatch --array=0-{last}}}"
RECIPE="${{RECIPES[$TASK]}}"
echo "sweep {sweep.name}: array task $TASK -> $RECIPE"
exec bash launch/slurm.sbatch "$RECIPE"
"""


# ------------------------------------------------------------------------------------ running
def _run_state(p: Point) -> str:
    """finished (hf/ export exists), resume (a run directory to continue), or new."""
    if (p.run_dir / "hf" / "config.json").is_file():
        return "finished"
    return "resume" if (p.run_dir / "config.yaml").is_file() else "new"


def check_finished(points: list[Point]) -> None:
    """A finished run is reused only if it was trained with exactly this point's recipe."""
    for p in points:
        if _run_state(p) == "finished":
            changes = recipe_changes(yaml.safe_load((p.run_dir / "config.yaml").read_text()), p.recipe)
            if changes:
                key, ran, here = changes[0]
                raise UserError(f"{p.run_dir} finished with a different recipe ({key}: {json.dumps(ran, default=str)} "
                                f"in the run, {json.dumps(here, default=str)} here); move it away or rename the sweep")


def _lsa(args: list[str]) -> int:
    print("$ lsa " + shlex.join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "lsa_ds.cli", *args]).returncode


def run_all(sweep: Sweep, nproc: int | None, folder: Path, baseline: str | None = None) -> int:
    todo = [*sweep.requires, *sweep.points]
    check_finished(todo)
    files = dict(zip((p.name for p in sweep.points), write_recipes(sweep, folder)))
    for i, p in enumerate(todo, 1):
        state = _run_state(p)
        head = f"[{i}/{len(todo)}] {p.name}" + (" (prerequisite)" if p.role == "requires" else "")
        if state == "finished":
            print(f"{head}: finished ({p.run_dir}/hf exists), skipping training", flush=True)
        else:
            print(f"{head}: {'resuming' if state == 'resume' else 'training'} -> {p.run_dir}", flush=True)
            args = ["train", str(files.get(p.name, p.source))] + (["--resume"] if state == "resume" else [])
            if _lsa(args + (["--nproc", str(nproc)] if nproc else [])) != 0:
                print(f"error: sweep {sweep.name}: {p.name} failed; fix it and rerun (finished runs are skipped)",
                      file=sys.stderr)
                return 1
        if sweep.eval_args is not None and p.role == "point":
            if (p.run_dir / "eval" / "report.json").is_file():
                print(f"{head}: evaluated already ({p.run_dir}/eval/report.json)", flush=True)
            elif _lsa(["eval", str(p.run_dir), *sweep.eval_args]) != 0:
                print(f"error: sweep {sweep.name}: lsa eval of {p.name} failed", file=sys.stderr)
                return 1

    print(write_sweep_report(sweep, folder, baseline))
    return 0


# ------------------------------------------------------------------------------------ main
def _parser() -> argparse.ArgumentParser:
    p = command_parser("sweep", __doc__.split("\n\n")[0])
    p.add_argument("ablation", help="ablation YAML file (docs/sweep.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key in every point (not in `requires`), e.g. --set train.max_steps=20")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print", dest="print_only", action="store_true",
                      help="print the `lsa train` command of every point; write nothing")
    mode.add_argument("--slurm", action="store_true",
                      help="write resolved recipes and a SLURM array script; print the sbatch line")
    mode.add_argument("--report", action="store_true",
                      help="gather the runs' final metrics into report.md/.csv/.png in the sweep folder")
    p.add_argument("--nproc", type=int, default=None, help="ranks per run for local training (passed to lsa train)")
    p.add_argument("--out", default=None, help="sweep folder (default <run.output_dir>/sweeps/<name>)")
    p.add_argument("--baseline", default=None, metavar="ARM",
                   help="arm (its name or label) the report's paired differences are taken from "
                        "(default: the arm with align.enabled false)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    sweep = load_sweep(args.ablation, args.overrides)
    folder = Path(args.out) if args.out else sweep.folder
    if args.baseline is not None:
        check_baseline(sweep, args.baseline)  # before anything trains
    if args.print_only:
        cmds = [train_command(r) for r in sweep.requires if _run_state(r) != "finished"]
        cmds += [train_command(p) for p in sweep.points]
        if sweep.eval_args is not None:
            cmds += [["lsa", "eval", str(p.run_dir), *sweep.eval_args] for p in sweep.points]
        print(f"# sweep {sweep.name}: {len(sweep.points)} points ({_shown(sweep.path)})")
        print("\n".join(shlex.join(c) for c in cmds))
        return 0
    if args.report:
        print(write_sweep_report(sweep, folder, args.baseline))
        return 0
    if args.slurm:
        files = write_recipes(sweep, folder)
        (folder / "logs").mkdir(exist_ok=True)
        script = folder / SLURM_SCRIPT
        script.write_text(slurm_script(sweep, files, folder))
        script.chmod(0o755)
        submit = f"sbatch --array=0-{len(files) - 1} {shlex.quote(_shown(script))}"
        pending = [r for r in sweep.requires if _run_state(r) != "finished"]
        print(f"# sweep {sweep.name}: {len(files)} points; recipes in {_shown(folder / 'recipes')}")
        if pending:
            print("# prerequisites first, then the array once they succeed:")
            for i, r in enumerate(pending):
                print(f"jid{i}=$(sbatch --parsable launch/slurm.sbatch {shlex.quote(_shown(r.source))})")
            deps = ":".join(f"$jid{i}" for i in range(len(pending)))
            submit = submit.replace("sbatch ", f"sbatch --dependency=afterok:{deps} ", 1)
        print(submit)
        if sweep.eval_args is not None:
            print(f"# afterwards, on a GPU node: lsa sweep {shlex.quote(_shown(sweep.path))} (skips finished "
                  f"training, runs lsa eval), then --report")
        return 0
    return run_all(sweep, args.nproc, folder, args.baseline)
