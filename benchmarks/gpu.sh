#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md, in batches that fit one device call each.
#   bash benchmarks/gpu.sh SET RESULTS_FILE   SET: fsdp-liger | fsdp-liger-more | fsdp-liger-pair |
#                                                  fsdp-liger-again | fsdp-lora | fsdp-plain-accum | first-step-cached | first-step |
#                                                  kernels | kernels-accum | kernels-lora |
#                                                  kernels-repeat | single | single-more | compile | fsdp1 |
#                                                  multi | multi-fsdp | multi4 |
#                                                  8b-lora-probe | 8b-lora | 8b-qlora-pack | pack-flex | pairs | dpo | grpo | pref | first-step-qlora-gc
# Needs ftray importable (pip install -e . or PYTHONPATH) and Ray; on our GPU hosts Ray comes from
# the offline bundle made by ../shared/gpu/offline-wheels.sh .whl (installed first when .whl exists).
set -euo pipefail
set_name=${1:?SET}; results=${2:?RESULTS_FILE}
. "$(dirname "$0")/offline_env.sh"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# BENCH_WORK: the work folder (data, spec, run folders; e.g. on a tmpfs, where checkpoints of an 8B
# model write in seconds); it gets the tokenizer of benchmarks/out/work when it has none.
work=${BENCH_WORK:-benchmarks/out/work}
if [ "$work" != benchmarks/out/work ] && [ ! -d "$work/tokenizer" ]; then
  mkdir -p "$work" && cp -r benchmarks/out/work/tokenizer "$work/"
fi
b() { timeout "${BENCH_TIMEOUT:-900}" python3 benchmarks/llm_bench.py "$@" --work "$work" --results "$results" || echo "FAILED: $*"; }
# docs_work BASE DOCS: a 1B work folder under BASE with rows of one document each (DOCS 0) or
# documents of up to DOCS words packed several to a row (kept apart); sets $work to it
docs_work() {
  work=$1/1b-docs$2; mkdir -p "$work"; cp -r "$1/tokenizer" "$work/"
  if [ "$2" = 0 ]; then b prepare --size 1b --steps 48 --batch 8; else b prepare --size 1b --steps 48 --batch 8 --doc-words "$2"; fi
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case $set_name in
  pairs)            # one GPU, 1B shape: SFT on prompt + chosen, generation tokens/s of its model
    #               (ftray predict against the same Predictor without Ray)
    b prepare --size 1b --steps 4 --batch 8
    b pairs --size 1b --steps 20 --batch 8 --prompts 1024 ;;
  dpo)              # one GPU, 1B shape: DPO on the pairs of set pairs (tokens/s against its SFT row)
    b prepare --size 1b --steps 4 --batch 8
    b dpo --size 1b --steps 20 --batch 8 ;;
  pref)             # one GPU, 1B shape, issue 19's figures in one call: SFT on prompt + chosen, DPO on
    #               the same pairs (tokens/s against that SFT row), GRPO (generation/update tokens/s,
    #               generating's share), then generation tokens/s of the SFT model (512 prompts)
    b prepare --size 1b --steps 4 --batch 8
    b sft --size 1b --steps 20 --batch 8
    b dpo --size 1b --steps 20 --batch 8
    b grpo --size 1b --steps 10 --batch 8
    b pairs --size 1b --steps 20 --batch 8 --prompts 512 ;;
  grpo)             # one GPU, 1B shape: GRPO on the pairs' prompts (8 answers of 128 tokens each):
    #               generation and update tokens/s, and the share of the epoch spent generating
    b prepare --size 1b --steps 4 --batch 8
    b grpo --size 1b --steps 10 --batch 8 ;;
  8b-lora)          # one GPU, 8B shape: the plain step with ftray's in-place adapter add, then ftray's
    #               LoRA with that add and the fused loss (model.fused_loss)
    b prepare --size 8b --steps 16 --batch 4
    b profile --size 8b --batch 2 --steps 6 --fused-ce --lora-addmm
    b ftray --size 8b --method lora --kernels liger --batch-override 2 --set model.fused_loss=true ;;
  8b-qlora-pack)    # one GPU: QLoRA on the 8B shape (NF4 base, fused loss, adapter-only export; again
    #               without the fused loss if that fails), then packing's isolation on the 1B shape:
    #               LoRA on short documents (several per row, attention kept apart) against one per row
    b prepare --size 8b --steps 16 --batch 4
    b ftray --size 8b --method lora --kernels liger --batch-override 2 --quantize nf4 \
      --set model.fused_loss=true --set method.export=adapter
    grep -q '"quantize": "nf4"' "$results" || b ftray --size 8b --method lora --kernels liger --batch-override 2 \
      --quantize nf4 --set method.export=adapter
    base=$work
    for docs in 0 512; do
      docs_work "$base" $docs
      b ftray --size 1b --method lora --kernels liger --set model.fused_loss=true --set method.export=adapter
    done ;;
  pack-flex)        # one GPU, 1B shape: isolating packing with flex_attention (blocks between examples
    #               skipped) against SDPA's dense block-diagonal mask, and rows of one document each
    base=$work
    for docs in 512 0; do
      docs_work "$base" $docs
      if [ "$docs" = 512 ]; then
        b ftray --size 1b --method lora --kernels liger --set model.fused_loss=true --set method.export=adapter \
          --set model.attention=flex_attention
      fi
      b ftray --size 1b --method lora --kernels liger --set model.fused_loss=true --set method.export=adapter
    done ;;
  8b-lora-probe)    # one GPU, Llama-3-8B shape at 4096: the LoRA step in plain PyTorch by kernel kind with
    #               the fused cross-entropy and the addmm adapter add, then ftray's LoRA at batch 2
    b prepare --size 8b --steps 16 --batch 4
    b profile --size 8b --batch 2 --steps 6
    b profile --size 8b --batch 2 --steps 6 --fused-ce
    b profile --size 8b --batch 2 --steps 6 --fused-ce --lora-addmm
    b profile --size 8b --batch 4 --steps 4 --fused-ce --lora-addmm
    b profile --size 8b --batch 8 --steps 2 --fused-ce --lora-addmm --gradient-checkpointing
    b ftray --size 8b --method lora --kernels liger --batch-override 2 ;;
  fsdp-liger)       # one GPU, FSDP2 (bf16 compute copies of fp32 weights) + Liger: ftray, plain, Ray Train's floor
    b prepare --size 1b --steps 64 --batch 8
    b ftray --size 1b --method full --kernels liger --strategy fsdp
    b plain --size 1b --steps 40 --batch 8 --kernels liger --strategy fsdp
    b floor --size 1b
    b ftray --size 1b --method full --kernels liger --strategy fsdp --batch-override 32 --accum 4 ;;
  fsdp-liger-more)  # one GPU: the 64k-token plain FSDP2 step, ftray DDP + Liger (first step), second runs
    b prepare --size 1b --steps 64 --batch 8
    b plain --size 1b --steps 16 --batch 32 --accum 4 --kernels liger --strategy fsdp
    b ftray --size 1b --method full --kernels liger
    b floor --size 1b
    b ftray --size 1b --method full --kernels liger --strategy fsdp ;;
  fsdp-liger-pair)  # one GPU: the 64k-token FSDP2 + Liger pair in one call, then the 16k plain step again
    b prepare --size 1b --steps 64 --batch 8
    b plain --size 1b --steps 16 --batch 32 --accum 4 --kernels liger --strategy fsdp
    b ftray --size 1b --method full --kernels liger --strategy fsdp --batch-override 32 --accum 4
    b plain --size 1b --steps 40 --batch 8 --kernels liger --strategy fsdp
    b plain --size 1b --steps 16 --batch 32 --accum 4 --kernels liger --strategy fsdp ;;
  fsdp-liger-again) # one GPU: second ftray runs of the FSDP2 + Liger steps (64k, then 16k tokens per step)
    b prepare --size 1b --steps 64 --batch 8
    b ftray --size 1b --method full --kernels liger --strategy fsdp --batch-override 32 --accum 4
    b ftray --size 1b --method full --kernels liger --strategy fsdp ;;
  fsdp-plain-accum) # one GPU: the plain 64k-token FSDP2 step, no gradient reduction before the last micro-batch
    b plain --size 1b --steps 16 --batch 32 --accum 4 --kernels liger --strategy fsdp
    b plain --size 1b --steps 16 --batch 32 --accum 4 --kernels liger --strategy fsdp
    b plain --size 1b --steps 40 --batch 8 --kernels liger --strategy fsdp ;;
  first-step-cached) # one GPU: the first step with Python's bytecode cache on (our hosts set
    #                  PYTHONDONTWRITEBYTECODE=1, so every process compiles torch and transformers again)
    export PYTHONPYCACHEPREFIX=/tmp/pyc; unset PYTHONDONTWRITEBYTECODE
    python3 -c "import ftray.cli, ftray.train, transformers.models.llama.modeling_llama, liger_kernel.transformers, ray.data, ray.train.torch, sklearn, torch._dynamo"
    b floor --size 1b
    b prepare --size 1b --steps 64 --batch 8
    b ftray --size 1b --method full --kernels liger ;;
  first-step)       # one GPU: the 1B first step of `ftray run` against Ray Train's floor, side by side
    #               (issue 22 item 5: within 5 s of the floor), alternated floor / ftray twice
    b prepare --size 1b --steps 30 --batch 8
    b floor --size 1b
    b ftray --size 1b --method full
    b floor --size 1b
    b ftray --size 1b --method full ;;
  first-step-qlora-gc) # one GPU: the 1B first step of `ftray run` against Ray Train's floor (one pair),
    #                    then QLoRA on the 8B shape with activation checkpointing (issue 18's memory target)
    b prepare --size 1b --steps 30 --batch 8
    b floor --size 1b
    b ftray --size 1b --method full
    b prepare --size 8b --steps 16 --batch 4
    b ftray --size 8b --method lora --kernels liger --batch-override 2 --quantize nf4 --gradient-checkpointing \
      --set model.fused_loss=true --set method.export=adapter ;;
  fsdp-lora)        # one GPU: LoRA under FSDP2 + Liger (bf16 compute copies of the frozen fp32 weights)
    b prepare --size 1b --steps 64 --batch 8
    b ftray --size 1b --method lora --kernels liger --strategy fsdp ;;
  kernels)          # one GPU, Liger kernels: ftray against plain DDP at 16k and 64k tokens per step, LoRA
    b prepare --size 1b --steps 64 --batch 8
    b ftray --size 1b --method full --kernels liger
    b plain --size 1b --steps 40 --batch 8 --kernels liger
    b ftray --size 1b --method lora --kernels liger
    b ftray --size 1b --method full --kernels liger --batch-override 32 --accum 4
    b plain --size 1b --steps 16 --batch 32 --accum 4 --kernels liger ;;
  kernels-accum)    # one GPU, Liger kernels: 64k tokens per step (4 micro-batches), then 16k again
    b prepare --size 1b --steps 64 --batch 8
    b ftray --size 1b --method full --kernels liger --batch-override 32 --accum 4
    b plain --size 1b --steps 16 --batch 32 --accum 4 --kernels liger
    b plain --size 1b --steps 40 --batch 8 --kernels liger
    b ftray --size 1b --method full --kernels liger ;;
  kernels-lora)     # one GPU: LoRA with and without Liger kernels; the plain 64k-token step; full again
    b prepare --size 1b --steps 64 --batch 8
    b ftray --size 1b --method lora --kernels liger
    b ftray --size 1b --method lora
    b plain --size 1b --steps 16 --batch 32 --accum 4 --kernels liger
    b ftray --size 1b --method full --kernels liger --batch-override 32 --accum 4 ;;
  kernels-repeat)   # one GPU: second runs of the 64k-token plain step and LoRA; full without Liger
    b prepare --size 1b --steps 64 --batch 8
    b plain --size 1b --steps 16 --batch 32 --accum 4 --kernels liger
    b ftray --size 1b --method lora
    b ftray --size 1b --method full
    b ftray --size 1b --method lora --kernels liger ;;
  single)           # one GPU: ftray vs plain DDP step, eager and compiled; time to first step
    b prepare --size 1b --steps 30 --batch 8
    b ftray --size 1b --method full
    b plain --size 1b --steps 40 --batch 8
    b plain --size 1b --steps 40 --batch 8 --compile ;;
  single-more)      # one GPU: LoRA against full, ftray with torch.compile, LoRA with checkpointing
    b prepare --size 1b --steps 30 --batch 8
    b ftray --size 1b --method lora
    b ftray --size 1b --method full --compile
    b ftray --size 1b --method lora --gradient-checkpointing ;;
  compile)          # one GPU: the compiled pair, ftray and plain DDP, in one call
    b prepare --size 1b --steps 30 --batch 8
    b ftray --size 1b --method full --compile
    b plain --size 1b --steps 40 --batch 8 --compile ;;
  fsdp1)            # one GPU under FSDP2 (bf16 compute copies, fp32 master weights), eager and compiled
    b prepare --size 1b --steps 30 --batch 8
    b ftray --size 1b --method full --strategy fsdp
    b ftray --size 1b --method full --strategy fsdp --compile ;;
  multi)            # 1 and 2 GPUs (per-GPU throughput, 8 sequences per GPU), ftray and plain DDP
    b prepare --size 1b --steps 30 --batch 16
    b ftray --size 1b --method full --gpus 1 --batch-override 8
    b ftray --size 1b --method full --gpus 2
    b plain --size 1b --steps 40 --batch 16 --gpus 2
    b plain --size 1b --steps 40 --batch 8 --gpus 1 ;;
  multi-fsdp)       # after `multi`: FSDP2 on 2 GPUs
    b ftray --size 1b --method full --gpus 2 --strategy fsdp ;;
  multi4)           # 1 and 4 GPUs
    b prepare --size 1b --steps 30 --batch 32
    b ftray --size 1b --method full --gpus 1 --batch-override 8
    b ftray --size 1b --method full --gpus 4 ;;
esac
