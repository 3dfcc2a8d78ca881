"""`scaling:`: how many workers (fixed or an elastic range) and which devices."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from ftray.schema import Strict, describe


class ScalingSpec(Strict):
    num_workers: int = describe(
        "Data-parallel training workers; `[min, max]` trains elastically (needs `run.max_failures` > 0).",
        1, ge=1, le=1024)
    min_workers: int | None = describe(
        "Elastic training: the fewest workers to go on with after losing nodes (`num_workers: [min, max]` "
        "sets it; None = fixed size).", None, ge=1, le=1024)
    use_gpu: bool = describe("Give each worker one GPU.", False)
    cpus_per_worker: float = describe("CPUs reserved (and torch threads) per worker.", 1.0, gt=0.0, le=256)
    strategy: Literal["ddp", "fsdp"] = describe(
        "ddp: a model replica per worker; fsdp: FSDP2 shards weights, gradients and optimizer state "
        "over the workers (for models that do not fit one device) and under bf16 computes with bf16 "
        "copies of the fp32 weights: the fastest full fine-tuning we measured on one GPU too (LoRA "
        "runs faster under ddp).", "ddp")

    @model_validator(mode="before")
    @classmethod
    def _elastic_range(cls, raw: Any) -> Any:
        # `num_workers: [min, max]` is stored as min_workers plus num_workers (the max), so that
        # num_workers stays the one int every other part of ftray reads.
        if isinstance(raw, dict) and isinstance(raw.get("num_workers"), (list, tuple)) \
                and len(raw["num_workers"]) == 2 and "min_workers" not in raw:
            low, high = raw["num_workers"]
            raw = {**raw, "num_workers": high, "min_workers": low}
        return raw

    @model_validator(mode="after")
    def _elastic_order(self) -> "ScalingSpec":
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(f"num_workers: the range [{self.min_workers}, {self.num_workers}] has min > max")
        return self

    @property
    def elastic(self) -> bool:
        """Whether the worker count may change during the run (nodes lost or added)."""
        return self.min_workers is not None and self.min_workers < self.num_workers
