#!/usr/bin/env bash
# Pretrain a recipe on one machine with N processes (one per GPU) under DeepSpeed.
#
#   recipes/launch/single_node.sh [-n NUM_PROCS] [-c DS_CONFIG.json] [-p PORT] RECIPE.yaml [key.sub=value ...]
#
#   -n  processes (default: every GPU DeepSpeed sees; on a CPU-only machine set DS_ACCELERATOR=cpu and give -n)
#   -c  a DeepSpeed JSON overriding the config generated from the recipe (e.g. recipes/deepspeed/zero3.json)
#   -p  rendezvous port on this machine (default 29500)
# train.batch_size is per process: the global batch is batch_size x accumulate x NUM_PROCS.
# PYTHON selects the interpreter (default: python3 on PATH; use your venv's).
set -euo pipefail
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

nproc="" ds_config="" port="${MASTER_PORT:-29500}"
while getopts "n:c:p:h" opt; do
  case "$opt" in
    n) nproc="$OPTARG" ;; c) ds_config="$OPTARG" ;; p) port="$OPTARG" ;; *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
recipe="$1"; shift

PYTHON="${PYTHON:-python3}"
ds_args=(deepspeed.enabled=true)
[ -n "$ds_config" ] && ds_args+=("deepspeed.config=$ds_config")
launch=(--master_addr 127.0.0.1 --master_port "$port")
[ -n "$nproc" ] && launch+=(--num_gpus "$nproc")

# --no_local_rank: each process reads LOCAL_RANK from its environment
exec "$PYTHON" -m deepspeed.launcher.runner "${launch[@]}" --no_local_rank --module unimim.app.cli \
  pretrain "$recipe" "${ds_args[@]}" "$@"
