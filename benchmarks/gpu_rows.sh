#!/usr/bin/env bash
# The GPU rows of the performance table in one command, for one lent GPU machine (at most ~9.5 min on an H100 / H200: run it with timeout_s 600):
#
#   1. gpu_throughput.py: the data2vec 1.0 ViT-B/16 step of the training loop through SingleProcessEngine and
#      DeepSpeed ZeRO-0 / ZeRO-2 in a world of one, against a plain timm ViT-B/16 supervised step (FLOP-rate
#      ratio; the DeepSpeed rows run only where `import deepspeed` works: carry its wheels, benchmarks/README.md).
#   2. peer_table.py --model vitb16: MAE and data2vec 1.0 against their Hugging Face peers, data2vec 1.0 with
#      activation checkpointing and with train.compile, MAE with train.compile, data2vec 2.0 with its 16 masks
#      per image; images/s, % of the bf16 mm peak and peak memory per row.
#
# Everything lands in $OUT (default /tmp/gpu_rows): two JSONs and their logs. Each stage has its own time limit,
# so a stage that hangs still leaves the other's results. Usage, from the repository root:
#
#   bash benchmarks/gpu_rows.sh                 # python3 with torch, timm and transformers on PATH
#   BATCH=64 STEPS=20 bash benchmarks/gpu_rows.sh
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_rows}
PY=${PY:-python3}
BATCH=${BATCH:-64}     # peer table batch (per step); gpu_throughput.py uses the recipe's 128
STEPS=${STEPS:-20}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then   # carried wheels (deepspeed and what it needs)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
engines=single,peer
if "$PY" -c 'import deepspeed' >/dev/null 2>&1; then engines=single,ds0,ds2,peer; fi
echo "gpu_throughput engines: $engines" | tee -a "$OUT/gpu.txt"

timeout 150 "$PY" benchmarks/gpu_throughput.py --device cuda --tf32 off --steps 30 --engines "$engines" \
    --out "$OUT/gpu_throughput.json" 2>&1 | tee "$OUT/gpu_throughput.log"
echo "gpu_throughput.py exit: $?" | tee -a "$OUT/gpu.txt"

timeout 400 "$PY" benchmarks/peer_table.py --device cuda --model vitb16 --batch-size "$BATCH" --steps "$STEPS" \
    --warmup 3 --peak-sizes 4096,8192 --rows mae,mae_hf,d2v1,d2v1_hf,d2v1_ckpt,d2v2_r16,d2v1_compile,mae_compile \
    --json "$OUT/peers_cuda.json" 2>&1 | tee "$OUT/peers_cuda.log"
echo "peer_table.py exit: $?" | tee -a "$OUT/gpu.txt"
