"""How a worker's model is spread over the workers: DDP (replicas) or FSDP2 (shards).

`scaling.strategy: ddp` replicates the model and all-reduces gradients (Ray Train's
`prepare_model`). `fsdp` shards parameters, gradients and optimizer state with PyTorch's FSDP2
(`fully_shard` on every backbone block, then on the whole model), for models whose weights and
optimizer state do not fit one device. Both keep the one checkpoint format: under FSDP every rank
takes part in gathering full (CPU) state dicts, and rank 0 writes them: a checkpoint holds whole
weights and optimizer state, never shards.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


def build_place(spec, device, world: int):
    """Where to build the model: straight on the GPU for replicas, and for FSDP on one worker, whose
    one shard is the whole model (initialising a billion weights there takes a fraction of the CPU's
    time); on the CPU for FSDP over several workers, whose shards are made after."""
    on_gpu = spec.scaling.strategy == "ddp" or world == 1
    return torch.device(device) if device.type == "cuda" and on_gpu else nullcontext()


def wrap(model, spec, device):
    """The model to run forward/backward on: DDP-wrapped, FSDP2-sharded, or (1 worker) as is."""
    import ray.train.torch

    if spec.train.precision == "bf16" and device.type == "cuda" and spec.scaling.strategy == "ddp":
        # Frozen weights never update and autocast casts them to bf16 at every use: keep them in
        # bf16 (half the memory, no per-step casts). Same forward and backward values.
        for p in model.parameters():
            # (A plain tensor only: `.to` would dequantize a 4-bit NF4 weight, `method.quantize`.)
            if not p.requires_grad and p.is_floating_point() and type(p.data) is torch.Tensor:
                p.data = p.data.to(torch.bfloat16)
    if spec.train.compile:
        model.compile()  # in place: parameter names (and so checkpoints) stay the same
    if spec.scaling.strategy == "ddp":
        return ray.train.torch.prepare_model(model)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.to(device)
    # Gather parameters in bf16 when training in bf16; reduce gradients in fp32 for accuracy.
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if spec.train.precision == "bf16" else MixedPrecisionPolicy())
    for block in model.blocks():
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def grad_sync(model, sync: bool):
    """Context for one micro-batch's forward: skip the gradient all-reduce inside an accumulation
    window. FSDP2 reads its flag during backward, so it is set here and left until the next call."""
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
        return nullcontext()
    return nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()


def full_states(model, optimizer, rebuild) -> tuple[torch.nn.Module, dict]:
    """(a model holding the full weights, the full optimizer state) for a checkpoint.

    Under DDP these are the rank's own (every replica is whole). Under FSDP every rank must call
    this (it gathers shards); rank 0 gets a CPU copy of the model made by `rebuild()` on the meta
    device with the gathered weights assigned, the other ranks get (None, {})."""
    if not is_sharded(model):
        return model, optimizer.state_dict()
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=opts)
    optim = get_optimizer_state_dict(model, optimizer, options=opts)
    if dist.get_rank() != 0:
        return None, {}
    with torch.device("meta"):
        copy = rebuild()
    copy.load_state_dict(weights, assign=True)
    return copy, optim


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Restore an optimizer from a checkpoint's (full) state, onto replicas or shards."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
