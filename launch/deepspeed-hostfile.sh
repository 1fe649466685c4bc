#!/usr/bin/env bash
# Multi-node training with the deepspeed launcher and a hostfile (see launch/hostfile.example).
# Run it once, on a node that reaches every host by passwordless ssh: `lsa train` checks the
# recipe, prepares the token cache and writes the run directory once, then the deepspeed runner
# starts the ranks on every host through pdsh/ssh, each in this same working directory with this
# same Python. The working directory, run directory and data.cache_dir must be on a filesystem
# every node shares.
#
#   HOSTFILE=launch/hostfile launch/deepspeed-hostfile.sh recipes/my.yaml --set train.max_steps=1000
#   launch/deepspeed-hostfile.sh recipes/my.yaml --hostfile hosts --resume
#
# ssh does not carry this shell's environment to the other hosts: the deepspeed runner exports
# what a `.deepspeed_env` file lists. This script writes one (DS_ENV_FILE, a temporary file,
# merged over ~/.deepspeed_env and ./.deepspeed_env) with NCCL_*, GLOO_*, HF_*, TRANSFORMERS_*,
# TORCH_*, LSA_*, DS_* (DS_ACCELERATOR...), PATH, LD_LIBRARY_PATH, CUDA_HOME, PYTHONPATH,
# OMP_NUM_THREADS, TOKENIZERS_PARALLELISM and any names listed in LSA_EXPORT.
# Environment: HOSTFILE (default ./hostfile; or --hostfile), MASTER_ADDR (default: deepspeed asks
# the first host for `hostname -I`), MASTER_PORT (default 29500), NPROC_PER_NODE (default: the
# hosts' slots), PYTHON (default python). --num_nodes N uses the first N hosts.
# LSA_DRY_RUN=1 or --dry-run: print the exported variables, the launcher command and the command
# each host would run (one line per host, with its node rank); start nothing.
set -euo pipefail

usage() {
    echo "usage: $0 RECIPE [--set key=value ...] [--hostfile FILE] [--num_nodes N] [--nproc G] [--resume|--overwrite] [--dry-run]" >&2
    exit 2
}
die() { echo "error: $*" >&2; exit 2; }
positive() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

[[ $# -ge 1 && $1 != -* ]] || usage
recipe=$1
shift
[[ -f $recipe ]] || die "recipe $recipe not found"

dry_run=${LSA_DRY_RUN:-0}
hostfile=${HOSTFILE:-hostfile}
num_nodes=""
per_node=${NPROC_PER_NODE:-}
master_addr=${MASTER_ADDR:-}
master_port=${MASTER_PORT:-29500}
args=()  # passed to `lsa train` as given
sets=()  # the --set overrides alone, to name the run directory in a dry run
while (($# > 0)); do
    case $1 in
        --dry-run) dry_run=1 ;;
        --hostfile | --num_nodes | --nproc | --num_gpus | --master_addr | --master_port | --set)
            (($# >= 2)) || die "$1 needs a value"
            case $1 in
                --hostfile) hostfile=$2 ;;
                --num_nodes) num_nodes=$2 ;;
                --nproc | --num_gpus) per_node=$2 ;;
                --master_addr) master_addr=$2 ;;
                --master_port) master_port=$2 ;;
                --set) args+=(--set "$2"); sets+=("$2") ;;
            esac
            shift ;;
        --hostfile=* | --num_nodes=* | --nproc=* | --num_gpus=* | --master_addr=* | --master_port=*)
            die "write ${1%%=*} VALUE, not ${1%%=*}=VALUE" ;;
        *) args+=("$1") ;;
    esac
    shift
done

# Read the hostfile the way deepspeed does (`HOST slots=N`, '#' comments), but refuse a missing
# one: deepspeed would silently train on this host alone.
[[ -f $hostfile ]] || die "hostfile $hostfile not found (set HOSTFILE or pass --hostfile; see launch/hostfile.example)"
hosts=()
slots=()
while IFS= read -r line || [[ -n $line ]]; do
    line=${line#"${line%%[![:space:]]*}"}
    [[ -z $line || $line == \#* ]] && continue
    [[ $line =~ ^([^[:space:]]+)[[:space:]]+slots=([0-9]+) ]] ||
        die "$hostfile: bad line '$line' (expected 'HOSTNAME slots=N')"
    hosts+=("${BASH_REMATCH[1]}")
    slots+=("${BASH_REMATCH[2]}")
done <"$hostfile"
((${#hosts[@]} > 0)) || die "$hostfile lists no hosts"
num_nodes=${num_nodes:-${#hosts[@]}}
if ! positive "$num_nodes" || ((num_nodes > ${#hosts[@]})); then
    die "--num_nodes $num_nodes: $hostfile lists ${#hosts[@]} host(s)"
fi

# Every node runs the same number of ranks (the DeepSpeed config's batch size assumes it): the
# smallest slot count of the hosts used, unless given.
min_slots=${slots[0]}
for ((i = 0; i < num_nodes; i++)); do
    if ((slots[i] < min_slots)); then min_slots=${slots[i]}; fi
done
per_node=${per_node:-$min_slots}
positive "$per_node" || die "ranks per node '$per_node' is not a positive integer"
((per_node <= min_slots)) || die "$per_node ranks per node, but a host in $hostfile has only $min_slots slots"
positive "$master_port" || die "master port '$master_port' is not a number"

# Defaults every rank should see, set before the environment file is written.
cores=$(nproc 2>/dev/null || echo 1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((cores / per_node > 1 ? cores / per_node : 1))}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

env_lines() {  # the variables to export, as NAME=VALUE lines (the .deepspeed_env format)
    local f name wanted
    for f in "$HOME/.deepspeed_env" ./.deepspeed_env; do
        # user files first: the runner keeps the last value of a name, so ours win
        if [[ -f $f ]]; then grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$f" || true; fi
    done
    read -ra wanted <<<"${LSA_EXPORT:-}"
    while IFS= read -r name; do
        [[ $name == DS_ENV_FILE || $name == LSA_EXPORT || $name == LSA_DRY_RUN ]] && continue
        [[ ${!name} == *$'\n'* ]] && continue  # one line per variable in the file
        printf '%s=%s\n' "$name" "${!name}"
    done < <(compgen -e | grep -E '^(NCCL_|GLOO_|HF_|TRANSFORMERS_|TORCH_|LSA_|DS_)' ;
             printf '%s\n' PATH LD_LIBRARY_PATH CUDA_HOME PYTHONPATH OMP_NUM_THREADS TOKENIZERS_PARALLELISM \
                 ${wanted[@]+"${wanted[@]}"} | while read -r n; do [[ -n ${!n+x} ]] && echo "$n"; done)
}

py=${PYTHON:-python}
"$py" -c 'import lsa_ds' 2>/dev/null || die "$py cannot import lsa_ds: activate the project's venv or set PYTHON"
cmd=("$py" -m lsa_ds.cli train "$recipe" ${args[@]+"${args[@]}"} --hostfile "$hostfile"
     --num_nodes "$num_nodes" --nproc "$per_node" --master_port "$master_port")
if [[ -n $master_addr ]]; then cmd+=(--master_addr "$master_addr"); fi

if [[ $dry_run == 1 ]]; then
    # The ranks run the resolved copy of the recipe in the run directory; resolving it here also
    # checks the recipe and the overrides.
    run_dir=$("$py" - "$recipe" ${sets[@]+"${sets[@]}"} <<'EOF'
import sys
from lsa_ds.recipe import load_recipe
from lsa_ds.errors import UserError
try:
    print(load_recipe(sys.argv[1], sys.argv[2:]).run_dir.resolve())
except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
EOF
    )
    echo "# exported to every node (.deepspeed_env):"
    env_lines | sed 's/^/#   /'
    printf '# on this host (sets up %s once, then starts the runner):\n' "$run_dir"
    printf '%q ' "${cmd[@]}"
    printf '\n# on each host, through pdsh/ssh:\n'
    origin=$(printf '%q' "$recipe")
    for s in ${sets[@]+"${sets[@]}"}; do origin+=" --set $(printf '%q' "$s")"; done
    first=0
    for ((i = 0; i < num_nodes; i++)); do
        printf 'node_rank=%d host=%s ranks=%d-%d: ' "$i" "${hosts[i]}" "$first" "$((first + per_node - 1))"
        printf 'cd %q; %q -u -m deepspeed.launcher.launch --node_rank=%d --master_addr=%s --master_port=%s ' \
            "$PWD" "$py" "$i" "${master_addr:-"\$(ssh ${hosts[0]} hostname -I)"}" "$master_port"
        printf -- '--module --no_local_rank lsa_ds.cli train %q --run-ready  # from %s\n' "$run_dir/config.yaml" "$origin"
        first=$((first + per_node))
    done
    exit 0
fi

command -v pdsh >/dev/null 2>&1 || ((num_nodes == 1)) ||
    die "pdsh not found: the deepspeed launcher reaches the other hosts through pdsh (apt-get install pdsh)"
env_file=$(mktemp "${TMPDIR:-/tmp}/lsa-deepspeed-env.XXXXXX")
trap 'rm -f "$env_file"' EXIT
env_lines >"$env_file"
export DS_ENV_FILE=$env_file  # deepspeed joins it to ~ and .; an absolute path wins over both

# Not exec: the environment file must outlive the runner's start. Pass SIGTERM/SIGINT on to
# `lsa train`, which forwards them to the ranks (they save a checkpoint and stop).
"${cmd[@]}" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT
while :; do
    rc=0
    wait "$child" || rc=$?
    kill -0 "$child" 2>/dev/null || break  # wait returned because the child exited, not a signal
done
exit "$rc"
