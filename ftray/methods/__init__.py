"""Fine-tuning methods, chosen by `method.name`. One file each, registered here explicitly."""

from ftray.methods.attention import Attention
from ftray.methods.base import Method
from ftray.methods.distill import Distill
from ftray.methods.full import Full
from ftray.methods.incremental import Incremental
from ftray.methods.lora import Lora
from ftray.methods.meta import Meta
from ftray.methods.transfer import Transfer

METHODS: dict[str, type[Method]] = {"full": Full, "transfer": Transfer, "lora": Lora, "attention": Attention,
                                    "distill": Distill, "incremental": Incremental, "meta": Meta}


def get_method(spec) -> Method:
    return METHODS[spec.method.name](spec)


__all__ = ["METHODS", "Method", "get_method"]
