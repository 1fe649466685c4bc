#!/usr/bin/env bash
# Multi-node training with plain torchrun: run this once on every node, with the same NNODES,
# MASTER_ADDR and MASTER_PORT and that node's NODE_RANK. torchrun starts NPROC_PER_NODE ranks,
# each running `python -m lsa_ds.cli train RECIPE ...` in rank mode: global rank 0 checks the
# recipe, prepares the token cache and writes the run directory while the others wait, then all
# train. The run directory and data.cache_dir must be on a filesystem every node shares.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 launch/torchrun-multinode.sh recipes/my.yaml --set train.max_steps=100
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 launch/torchrun-multinode.sh recipes/my.yaml --set train.max_steps=100
#
# Environment: NNODES (default 1), NODE_RANK (default SLURM_NODEID; required when NNODES > 1),
# MASTER_ADDR (node 0's address; required when NNODES > 1), MASTER_PORT (default 29500),
# NPROC_PER_NODE (default: GPUs seen by nvidia-smi, else 1), PYTHON (default python),
# OMP_NUM_THREADS (default: this node's cores / NPROC_PER_NODE).
# LSA_DRY_RUN=1 or --dry-run: print the command this node would run and start nothing.
set -euo pipefail

usage() {
    echo "usage: NNODES=N NODE_RANK=R MASTER_ADDR=HOST [MASTER_PORT=P] [NPROC_PER_NODE=G] $0 RECIPE [--set key=value ...] [--resume|--overwrite] [--dry-run]" >&2
    exit 2
}
die() { echo "error: $*" >&2; exit 2; }
in_range() { [[ $1 =~ ^[0-9]+$ ]] && (($1 >= $2 && $1 <= $3)); }  # VALUE MIN MAX

[[ $# -ge 1 && $1 != -* ]] || usage
recipe=$1
shift
[[ -f $recipe ]] || die "recipe $recipe not found"

dry_run=${LSA_DRY_RUN:-0}
args=()
for arg in "$@"; do
    # --dry-run is this script's (print, launch nothing); everything else goes to `lsa train`
    if [[ $arg == --dry-run ]]; then dry_run=1; else args+=("$arg"); fi
done

nnodes=${NNODES:-1}
# Under srun (launch/slurm.sbatch) every task is one node, and SLURM numbers them.
node_rank=${NODE_RANK:-${SLURM_NODEID:-}}
master_port=${MASTER_PORT:-29500}
if [[ -n ${NPROC_PER_NODE:-} ]]; then
    per_node=$NPROC_PER_NODE
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    per_node=$(nvidia-smi -L | grep -c '^GPU')
else
    per_node=1
fi
in_range "$nnodes" 1 100000 || die "NNODES=$nnodes: expected a positive integer"
in_range "$per_node" 1 100000 || die "NPROC_PER_NODE=$per_node: expected a positive integer"
in_range "$master_port" 1 65535 || die "MASTER_PORT=$master_port: expected a port number"
if ((nnodes > 1)); then
    [[ -n $node_rank ]] || die "NODE_RANK is not set: give every node its rank, 0 to $((nnodes - 1))"
    [[ -n ${MASTER_ADDR:-} ]] || die "MASTER_ADDR is not set: give every node the address of node 0"
    master_addr=$MASTER_ADDR
else
    node_rank=${node_rank:-0}
    master_addr=${MASTER_ADDR:-127.0.0.1}
fi
in_range "$node_rank" 0 $((nnodes - 1)) || die "NODE_RANK=$node_rank: expected 0 to $((nnodes - 1))"

# One BLAS thread pool per rank sized to its share of the cores, not every rank using them all.
cores=$(nproc 2>/dev/null || echo 1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((cores / per_node > 1 ? cores / per_node : 1))}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

py=${PYTHON:-python}
"$py" -c 'import lsa_ds' 2>/dev/null || die "$py cannot import lsa_ds: activate the project's venv or set PYTHON"

# Static rendezvous: node 0's agent hosts the store at MASTER_ADDR:MASTER_PORT, so global rank 0
# (the one that sets the run up) is on node 0 and node ranks are the ones given.
cmd=("$py" -m torch.distributed.run
     --nnodes="$nnodes" --node_rank="$node_rank" --nproc_per_node="$per_node"
     --master_addr="$master_addr" --master_port="$master_port"
     -m lsa_ds.cli train "$recipe" ${args[@]+"${args[@]}"})

if [[ $dry_run == 1 ]]; then
    printf 'node_rank=%s:' "$node_rank"
    printf ' %q' "OMP_NUM_THREADS=$OMP_NUM_THREADS" "${cmd[@]}"
    printf '\n'
    exit 0
fi
exec "${cmd[@]}"
