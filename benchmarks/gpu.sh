#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md, in batches that fit one device call each.
#   bash benchmarks/gpu.sh SET RESULTS_FILE   SET: single | single-compile | multi | multi-more | multi4
# Needs ftray importable (pip install -e . or PYTHONPATH) and Ray; on our GPU hosts Ray comes from
# the offline bundle made by ../shared/gpu/offline-wheels.sh .whl (installed first when .whl exists).
set -euo pipefail
set_name=${1:?SET}; results=${2:?RESULTS_FILE}
if [ -d .whl ]; then
  [ -d /tmp/site/ray ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
b() { timeout "${BENCH_TIMEOUT:-900}" python3 benchmarks/llm_bench.py "$@" --results "$results" || echo "FAILED: $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case $set_name in
  single)           # one GPU: ftray vs plain DDP step, LoRA vs full, time to first step
    b prepare --size 1b --steps 30 --batch 8
    b ftray --size 1b --method full
    b plain --size 1b --steps 40 --batch 8
    b ftray --size 1b --method lora
    b ftray --size 1b --method lora --gradient-checkpointing ;;
  single-compile)   # the same with torch.compile (after `single`: its data)
    b ftray --size 1b --method full --compile
    b plain --size 1b --steps 40 --batch 8 --compile
    b ftray --size 1b --method lora ;;
  multi)            # 1 and 2 GPUs (per-GPU throughput, 8 sequences per GPU), DDP
    b prepare --size 1b --steps 30 --batch 16
    b ftray --size 1b --method full --gpus 1 --batch-override 8
    b ftray --size 1b --method full --gpus 2 ;;
  multi-more)       # after `multi`: plain DDP on 2 GPUs, FSDP2 on 2 GPUs
    b plain --size 1b --steps 40 --batch 16 --gpus 2
    b ftray --size 1b --method full --gpus 2 --strategy fsdp ;;
  multi4)           # 1 and 4 GPUs
    b prepare --size 1b --steps 30 --batch 32
    b ftray --size 1b --method full --gpus 1 --batch-override 8
    b ftray --size 1b --method full --gpus 4 ;;
esac
