"""The NF4 layer of QLoRA (`ftray.models.quantize`): what it computes, what it stores, which shapes it
takes, its dense copy, and that DDP wraps a model holding it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftray.models.quantize import (NF4Linear, check_quantizable, dense_copy, quantize_blocks,
                                   scaler_block)
from ftray.schema import SpecError


def test_nf4_linear_computes_with_its_dequantized_weight_in_4_bits():
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    q = NF4Linear(linear)
    assert not q.weight.requires_grad and not q.bias.requires_grad
    dense = q.dequantize()
    assert dense.dtype == torch.bfloat16 and dense.shape == linear.weight.shape
    # NF4 rounds each weight to one of 16 levels of its 64-block's absolute maximum: the worst error
    # is half the widest gap between levels (0.30 of the maximum, between -1 and -0.70).
    block_max = linear.weight.detach().reshape(-1, 64).abs().amax(dim=1, keepdim=True)
    err = (dense.float() - linear.weight.detach()).reshape(-1, 64).abs()
    assert bool((err <= 0.16 * block_max + 1e-3).all())
    x = torch.randn(5, 256, requires_grad=True)
    out = q(x)
    torch.testing.assert_close(out, nn.functional.linear(x, dense.float(), linear.bias), rtol=1e-5, atol=1e-5)
    out.sum().backward()  # the input's gradient flows through the frozen 4-bit weight
    torch.testing.assert_close(x.grad, dense.float().sum(dim=0).expand(5, -1), rtol=1e-4, atol=1e-4)
    # 4 bits a weight + an 8-bit scale per 64 + a scale per 256 scales: ~3.9x smaller than bf16.
    assert q.storage_bytes() / (2 * linear.weight.numel()) < 0.27


def test_under_autocast_the_weight_dequantizes_to_the_autocast_dtype():
    q = NF4Linear(nn.Linear(64, 64, bias=False))
    x = torch.randn(3, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, x.to(torch.bfloat16) @ q.dequantize().T, rtol=0, atol=0)


@pytest.mark.parametrize("numel, group", [(64 * 256 * 3, 256), (64 * 64, 64), (64 * 96, 32), (64, 1)])
def test_small_layers_get_finer_scale_groups(numel, group):
    assert scaler_block(numel) == group
    NF4Linear(nn.Linear(64, numel // 64, bias=False))  # quantizes without torchao's divisibility error


def test_quantize_replaces_only_the_linear_layers_inside_the_blocks():
    blocks = nn.ModuleList([nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 64)) for _ in range(2)])
    model = nn.Sequential(nn.Embedding(10, 64), blocks, nn.Linear(64, 10))
    assert quantize_blocks(list(blocks)) == 4
    assert [type(m).__name__ for m in blocks[0]] == ["NF4Linear", "LayerNorm", "NF4Linear"]
    assert type(model[2]) is nn.Linear  # the head stays as it is


def test_layers_that_nf4_cannot_store_are_named():
    with pytest.raises(SpecError, match=r"method.quantize: nf4 stores weights in blocks of 64: the layers \['0.1'\]"):
        check_quantizable([nn.Sequential(nn.Linear(64, 64), nn.Linear(10, 10))])
    with pytest.raises(SpecError, match="no nn.Linear layers"):
        check_quantizable([nn.Sequential(nn.LayerNorm(8))])


def test_dense_copy_leaves_the_model_quantized_and_computes_the_same():
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))
    quantize_blocks([model])
    copy = dense_copy(model)
    assert [type(m) for m in copy] == [nn.Linear, nn.ReLU, nn.Linear]
    assert isinstance(model[0], NF4Linear) and isinstance(model[2], NF4Linear)
    x = torch.randn(4, 64)
    torch.testing.assert_close(copy.float()(x), model(x), rtol=1e-5, atol=1e-5)


DDP_CHECK = r"""
import os, sys
import torch, torch.distributed as dist
from torch import nn
from ftray.models.quantize import keep_out_of_ddp, quantize_blocks
model = nn.Sequential(nn.Sequential(nn.Linear(64, 64)), nn.Linear(64, 4))
quantize_blocks([model[0]])
keep_out_of_ddp(model)
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
ddp = nn.parallel.DistributedDataParallel(model)
ddp(torch.randn(2, 64)).sum().backward()
print(model[1].weight.grad is not None, model[0][0].weight.grad is None, flush=True)
os._exit(0)  # no teardown of the gloo group: see the test
"""


def test_ddp_wraps_and_trains_a_model_with_an_nf4_base(tmp_path):
    """DDP broadcasts rank 0's parameters when it wraps; NF4 weights cannot be broadcast, so they
    are kept out of its view (a one-process gloo group runs the same code path). In a process of its
    own that leaves without tearing the group down: in the test process, freeing the DDP's reducer
    after the group was destroyed once deadlocked (the reducer's last reference to the gloo group
    joined a gloo thread that waited for the GIL the freeing thread held), and hung the suite."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", DDP_CHECK, str(tmp_path / "pg")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "True"], proc.stdout  # the head's gradient, none for the NF4 block
