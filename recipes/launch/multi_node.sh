#!/usr/bin/env bash
# Pretrain a recipe on several machines under DeepSpeed, with a DeepSpeed hostfile ("hostname slots=N" per line).
#
#   recipes/launch/multi_node.sh -H HOSTFILE [-c DS_CONFIG.json] [-a MASTER_ADDR] [-p PORT] [-r NODE_RANK] \
#       RECIPE.yaml [key.sub=value ...]
#
# Without -r: run once on the first host; DeepSpeed starts every host's processes over passwordless ssh (pdsh).
# With -r:    no ssh; run this on every host, each with its own node rank (0 = the host at MASTER_ADDR), the same
#             hostfile, MASTER_ADDR and port.
#   -c  a DeepSpeed JSON overriding the config generated from the recipe
#   -a  address of node 0, reachable from every node (default: the first hostname in the hostfile)
#   -p  rendezvous port on node 0 (default 29500)
# The run directory (train.out_dir) must be on a filesystem all nodes share (DeepSpeed checkpoints are sharded).
# PYTHON selects the interpreter (default: python3 on PATH; use your venv's, the same path on every node).
set -euo pipefail
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

hostfile="" ds_config="" addr="" port="${MASTER_PORT:-29500}" node_rank=""
while getopts "H:c:a:p:r:h" opt; do
  case "$opt" in
    H) hostfile="$OPTARG" ;; c) ds_config="$OPTARG" ;; a) addr="$OPTARG" ;; p) port="$OPTARG" ;;
    r) node_rank="$OPTARG" ;; *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] && [ -n "$hostfile" ] || usage
[ -f "$hostfile" ] || { echo "error: hostfile not found: $hostfile" >&2; exit 2; }
recipe="$1"; shift
[ -n "$addr" ] || addr="$(awk '!/^[[:space:]]*(#|$)/ {print $1; exit}' "$hostfile")"

PYTHON="${PYTHON:-python3}"
ds_args=(deepspeed.enabled=true)
[ -n "$ds_config" ] && ds_args+=("deepspeed.config=$ds_config")
launch=(--hostfile "$hostfile" --master_addr "$addr" --master_port "$port")
[ -n "$node_rank" ] && launch+=(--no_ssh --node_rank "$node_rank")

exec "$PYTHON" -m deepspeed.launcher.runner "${launch[@]}" --no_local_rank --module unimim.app.cli \
  pretrain "$recipe" "${ds_args[@]}" "$@"
