"""A frozen 4-bit NF4 base (QLoRA, `method.quantize: nf4`) through torchao's `NF4Tensor`.

`quantize_blocks` replaces every `nn.Linear` inside the backbone blocks by an `NF4Linear`: still an
`nn.Linear` (so peft's LoRA wraps it like any other), whose weight is a frozen NF4Tensor: 4 bits a
weight plus one 8-bit scale per 64 weights (double quantization), ~0.52 bytes a weight against 2
in bf16. Each forward dequantizes the weight to the compute dtype (torchao's `linear_nf4`, also in
backward) and keeps no copy. Embeddings, the LM head and a classifier's head are not quantized: they
sit outside the blocks, the LM head's logits are the most precision-sensitive matrix product, and a
classifier's head trains. On an 8B Llama the blocks hold 7.0 of the 8.0 B weights.

`dense_copy` copies a model with its NF4Linear layers turned back into plain bf16 `nn.Linear`
layers: the base a merged export is built on (the same weights the quantized forward computed with).
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import importlib.util
import math

import torch
from torch import nn

from ftray.schema import SpecError

TORCHAO_PIP = "pip install 'torchao>=0.18' (or pip install 'ftray[qlora]')"
BLOCK = 64  # weights per NF4 scale: QLoRA's block (torchao's default)
SCALER_BLOCK = 256  # scales per double-quantization group (torchao's default)
STORAGE_DTYPE = torch.bfloat16  # the dtype NF4 dequantizes to and a merged export is written in


def check_torchao() -> None:
    """SpecError (before Ray starts) unless torchao >= 0.18 is installed, without importing it."""
    if importlib.util.find_spec("torchao") is None:
        raise SpecError(f"method.quantize: nf4 needs torchao, which is not installed: {TORCHAO_PIP}")
    version = importlib.metadata.version("torchao")
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < (0, 18):
        raise SpecError(f"method.quantize: nf4 needs torchao >= 0.18 (found {version}): {TORCHAO_PIP}")


@functools.cache  # called in every NF4Linear.forward: resolve the import once, not per layer call
def _nf4():
    """torchao's NF4 functions (imported on first use: torchao takes seconds to import)."""
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import NF4Tensor, linear_nf4, to_nf4
    return NF4Tensor, linear_nf4, to_nf4


def scaler_block(numel: int) -> int:
    """The double-quantization group for a weight of `numel` elements: torchao's 256 scales, or the
    largest power of two dividing the number of scales for smaller layers (torchao's default needs
    numel divisible by 64 x 256; the 4-bit weights are the same, only the scales are finer)."""
    return math.gcd(numel // BLOCK, SCALER_BLOCK)


def linear_layers(blocks: list[nn.Module]) -> dict[str, nn.Linear]:
    """The nn.Linear layers inside the blocks, by name relative to their block list ("0.mlp.up")."""
    return {f"{i}.{name}": m for i, block in enumerate(blocks)
            for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def check_quantizable(blocks: list[nn.Module]) -> None:
    """SpecError naming `method.quantize` unless the blocks hold linear layers that NF4 can store
    (works on a meta-device skeleton: only shapes are read)."""
    layers = linear_layers(blocks)
    if not layers:
        raise SpecError("method.quantize: nf4: this model's blocks hold no nn.Linear layers to quantize "
                        "(GPT-2 style Conv1D layers are not supported); use method.quantize: none")
    bad = sorted(n for n, m in layers.items() if m.weight.numel() % BLOCK)
    if bad:
        raise SpecError(f"method.quantize: nf4 stores weights in blocks of {BLOCK}: the layers {bad[:6]} "
                        f"have a weight size that is not a multiple of {BLOCK}; use method.quantize: none")


class NF4Linear(nn.Linear):
    """A frozen linear layer whose weight is stored in 4-bit NF4 and dequantized in each forward.

    Under autocast the input is cast to the autocast dtype first, so that the weight dequantizes
    straight to it (bf16 compute); otherwise the computation runs in the input's dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        _, _, to_nf4 = _nf4()
        weight = linear.weight.detach().to(STORAGE_DTYPE).contiguous()
        self.weight = nn.Parameter(to_nf4(weight, BLOCK, scaler_block(weight.numel())), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, linear_nf4, _ = _nf4()
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        out = linear_nf4(x, self.weight)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    # peft 0.21's DoRA needs the dense weight for its norm, through `dequantize_module_weight`, which
    # calls `module.dequantize()` on modules with a `W_q` (its rule for quantized layers; torchao's
    # own branch there calls `NF4Tensor.dequantize`, which is a different, static function).
    @property
    def W_q(self) -> torch.Tensor:  # noqa: N802 - the name peft looks for
        return self.weight

    def dequantize(self) -> torch.Tensor:
        """The weight in its storage dtype (bf16), dense."""
        return self.weight.get_original_weight()

    def storage_bytes(self) -> int:
        """Bytes the weight takes in memory: the 4-bit codes, the scales and their scales."""
        names, _ = self.weight.__tensor_flatten__()
        return sum(getattr(self.weight, name).nbytes for name in names)

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding the dequantized weight (bf16: exactly the values the quantized
        forward computes with) and a copy of the bias."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        out.weight = nn.Parameter(self.dequantize(), requires_grad=False)
        if self.bias is not None:
            out.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return out


def quantize_blocks(blocks: list[nn.Module]) -> int:
    """Replace every nn.Linear inside `blocks` by an NF4Linear, in place (on the weights' device);
    returns how many were replaced. Run `check_quantizable` first for a clear error."""
    count = 0
    for block in blocks:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and not isinstance(child, NF4Linear):
                    setattr(parent, name, NF4Linear(child))
                    count += 1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand back the dense weights' memory (the 8B shape: 28 GB in fp32)
    return count


def dense_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` with every NF4Linear replaced by its plain bf16 nn.Linear (the live
    module is untouched). A plain deepcopy cannot copy NF4 weights (torchao's clone re-quantizes,
    with its default block sizes), so the dense layers are handed to deepcopy as the copies."""
    memo = {id(m): m.to_linear() for m in module.modules() if isinstance(m, NF4Linear)}
    return copy.deepcopy(module, memo)


def keep_out_of_ddp(model: nn.Module) -> None:
    """DDP broadcasts rank 0's parameters when it wraps a model, which NF4 weights cannot take part
    in; every replica quantized the same weights itself, so they are left out of DDP's view."""
    from torch.nn.parallel import DistributedDataParallel
    names = [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, NF4Linear)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)


def is_quantized(module: nn.Module) -> bool:
    """Whether any layer under `module` is an NF4Linear."""
    return any(isinstance(m, NF4Linear) for m in module.modules())
