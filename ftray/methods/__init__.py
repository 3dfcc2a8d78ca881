"""Fine-tuning methods, chosen by `method.name`, registered here explicitly.

Each method is a folder: `config.py` (its `method:` section of the spec, with its own rules across
the spec's sections) and `hooks.py` (its training hooks; `rl` runs through `ftray.rl` instead).
`METHODS` is the one list of method names: the spec's `method` union, the spec reference and the
hooks lookup all come from it. Adding a method is one new folder and one entry below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftray.methods.attention.config import AttentionMethod
from ftray.methods.config import MethodConfig
from ftray.methods.distill.config import DistillMethod
from ftray.methods.dpo.config import DpoMethod
from ftray.methods.full.config import FullMethod
from ftray.methods.grpo.config import GrpoMethod
from ftray.methods.incremental.config import IncrementalMethod
from ftray.methods.lora.config import LoraMethod
from ftray.methods.meta.config import MetaMethod
from ftray.methods.rl.config import RLMethod
from ftray.methods.simpo.config import SimpoMethod
from ftray.methods.transfer.config import TransferMethod

if TYPE_CHECKING:
    from ftray.methods.base import Method

# name -> config class; the config class names its hooks (`MethodConfig.hooks`). The order is the
# spec reference's.
METHODS: dict[str, type[MethodConfig]] = {
    "full": FullMethod,
    "transfer": TransferMethod,
    "lora": LoraMethod,
    "attention": AttentionMethod,
    "distill": DistillMethod,
    "incremental": IncrementalMethod,
    "meta": MetaMethod,
    "dpo": DpoMethod,
    "simpo": SimpoMethod,
    "grpo": GrpoMethod,
    "rl": RLMethod,
}


def get_method(spec) -> Method:
    """The training hooks of the spec's (supervised) method, bound to the spec."""
    return METHODS[spec.method.name].hooks()(spec)


__all__ = ["METHODS", "MethodConfig", "get_method"]
