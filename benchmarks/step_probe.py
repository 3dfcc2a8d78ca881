"""Where a 1.1B Llama training step's time goes: the plain PyTorch step (no Ray) under variants
that ftray could adopt, each in its own process, on one GPU. This is how the kernel choices of
`model.kernels` and the LoRA input-cast fix were found; RESULTS.md cites its rows.

    python benchmarks/step_probe.py attn                        # SDPA backends, fwd+bwd, one layer's shape
    python benchmarks/step_probe.py variants benchmarks/step_probe.json   # the step under each variant
    python benchmarks/step_probe.py smoke                       # tiny model on CPU (the test suite)

A variant is a JSON object: `name`, and any of `liger` ("rope,rms,swiglu[,flce]": Liger kernels;
flce = fused linear cross-entropy, the loss computed inside the model), `cudnn` ("gqa": SDPA
restricted to cuDNN; "rep": also with repeated K/V heads), `lora` (r=16 on all linear layers,
frozen weights in bf16), `nocast` (peft's adapters skip their fp32 input copy), `gc` (gradient
checkpointing), `compile`, `batch` (sequences per step, default 8), `steps`/`warm`, `cap` (seconds).
Rows are appended to `$OUT/step_probe.jsonl` (or --results) and printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from llm_bench import SEQ, SIZES, mfu, new_model  # noqa: E402


def record(row: dict, results: Path) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def attention(results: Path) -> None:
    """Causal SDPA forward + backward at the 1b shape (8 x 2048 tokens, 32 query / 4 KV heads of 64)
    under each backend, with grouped-query heads passed as they are or repeated."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, kv, s, d = 8, 32, 4, 2048, 64
    q, k, v = (torch.randn(b, n, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for n in (h, kv, kv))
    grad = torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16)
    flops = 4 * b * h * s * s * d / 2 * 3.5  # causal: half the scores; backward ~2.5x forward
    for name, backend, gqa in [("flash-gqa", SDPBackend.FLASH_ATTENTION, True),
                               ("flash-rep", SDPBackend.FLASH_ATTENTION, False),
                               ("cudnn-rep", SDPBackend.CUDNN_ATTENTION, False),
                               ("cudnn-gqa", SDPBackend.CUDNN_ATTENTION, True),
                               ("efficient-rep", SDPBackend.EFFICIENT_ATTENTION, False)]:
        def once():
            kk, vv = (k, v) if gqa else (k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1))
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
            out.backward(grad)
        try:
            for _ in range(3):
                once()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(10):
                once()
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t) / 10
            record({"attn": name, "ms": dt * 1e3, "tflops": flops / dt / 1e12}, results)
        except Exception as e:  # noqa: BLE001 - a backend that refuses the shape is a result too
            record({"attn": name, "error": str(e)[:300]}, results)


def step(v: dict, results: Path) -> None:
    """Train the model `steps` steps under variant `v`; tokens/s over the steps after `warm`."""
    import torch
    import torch.nn.functional as F

    cpu = not torch.cuda.is_available()
    device, size = ("cpu", "tiny") if cpu else ("cuda", "1b")
    if v.get("cudnn"):
        if v["cudnn"] == "rep":
            import transformers.integrations.sdpa_attention as sdpa
            sdpa.use_gqa_in_sdpa = lambda *a, **k: False
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(True)
    torch.manual_seed(0)
    cfg, seq = SIZES[size], SEQ[size]
    model = new_model(size, device)
    liger = v.get("liger", "")
    if liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
        apply_liger_kernel_to_llama(rope="rope" in liger, rms_norm="rms" in liger, swiglu="swiglu" in liger,
                                    fused_linear_cross_entropy="flce" in liger, model=model)
    if v.get("lora"):
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules="all-linear"))
        for p in model.parameters():
            if not p.requires_grad and not cpu:
                p.data = p.data.to(torch.bfloat16)
    if v.get("nocast"):
        for m in model.modules():
            if hasattr(m, "cast_input_dtype_enabled"):
                m.cast_input_dtype_enabled = False
    if v.get("gc"):
        model.gradient_checkpointing_enable()
        if v.get("lora"):
            model.enable_input_require_grads()
    if v.get("compile"):
        model.compile()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=not cpu)
    micro, steps, warm = v.get("batch", 8), v.get("steps", 16), v.get("warm", 4)
    ids = torch.randint(1000, cfg["vocab_size"] - 1, (steps, micro, seq), device=device)

    def one(x):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=not cpu):
            if "flce" in liger:  # the model computes the loss without materialising the logits
                loss = model(input_ids=x, labels=x).loss
            else:
                logits = model(input_ids=x).logits[:, :-1].float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    sync = torch.cuda.synchronize if not cpu else (lambda: None)
    t = time.perf_counter()
    first = one(ids[0]).item()
    first_s = time.perf_counter() - t
    for i in range(1, warm):
        one(ids[i])
    sync()
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for i in range(warm, steps):
        last = one(ids[i])
    sync()
    tps = (steps - warm) * micro * seq / (time.perf_counter() - t)
    record({**v, "gpu": "cpu" if cpu else torch.cuda.get_device_name(0), "tokens_per_s": round(tps),
            "mfu": None if cpu else round(mfu(tps, cfg, seq, 1, torch.cuda.get_device_name(0)), 4),
            "peak_gib": None if cpu else round(torch.cuda.max_memory_allocated() / 2**30, 1),
            "first_step_s": round(first_s, 1), "loss_first": round(first, 3),
            "loss_last": round(last.item(), 3)}, results)


def variants(items: list[dict], results: Path) -> None:
    """Each variant in a fresh process (Liger patches modules globally), capped at `cap` seconds."""
    for v in items:
        cmd = [sys.executable, __file__, "step", json.dumps(v), "--results", str(results)]
        try:
            subprocess.run(cmd, timeout=v.get("cap", 150), check=False)
        except subprocess.TimeoutExpired:
            record({**v, "error": "timeout"}, results)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["attn", "variants", "step", "smoke"])
    p.add_argument("arg", nargs="?", help="variants: a JSON file of variants; step: one variant as JSON")
    p.add_argument("--results", type=Path, default=HERE / "out" / "step_probe.jsonl")
    a = p.parse_args(argv)
    if a.mode == "attn":
        attention(a.results)
    elif a.mode == "variants":
        variants(json.loads(Path(a.arg).read_text()), a.results)
    elif a.mode == "step":
        try:
            step(json.loads(a.arg), a.results)
        except Exception:  # noqa: BLE001 - a variant that fails is recorded, the others go on
            record({**json.loads(a.arg), "error": traceback.format_exc()[-1500:]}, a.results)
    else:  # smoke: the tiny model on CPU, full and LoRA without the input copy
        variants([{"name": "smoke-full", "steps": 3, "warm": 1, "batch": 2},
                  {"name": "smoke-lora", "lora": 1, "nocast": 1, "steps": 3, "warm": 1, "batch": 2}],
                 a.results)


if __name__ == "__main__":
    main()
