"""`serve:`: how `ftray serve` runs a finished run's model on Ray Serve (flags override it)."""

from __future__ import annotations

from pydantic import model_validator

from ftray.schema import Strict, describe


class ServeSpec(Strict):
    replicas: int = describe("Serve replicas of the model (the fewest, when `max_replicas` autoscales).",
                             1, ge=1, le=256)
    max_replicas: int | None = describe(
        "Autoscale between `replicas` and this many replicas on ongoing requests (None = fixed).", None,
        ge=1, le=256)
    target_ongoing_requests: float = describe("Autoscaling: ongoing requests per replica to aim for.",
                                              2.0, gt=0, le=1000)
    cpus_per_replica: float = describe("CPUs reserved (and torch threads) per replica.", 1.0, gt=0, le=256)
    max_ongoing_requests: int = describe(
        "Requests a replica takes at once (they wait there for its model); more wait in Serve's proxy.",
        32, ge=1, le=100_000)
    batch_requests: int = describe(
        "Concurrent `/predict` requests of one model that a replica answers with one model call "
        "(Serve's `@serve.batch`; 1: each request alone; LoRA adapters are always alone).", 1, ge=1, le=1024)
    batch_wait_ms: float = describe("How long a batch waits for more requests after its first one (ms).",
                                    2.0, ge=0, le=10_000)
    access_log: bool = describe("Serve's per-request access log lines (proxy and replicas).", False)
    max_rows: int = describe("Most rows one request may send (more: HTTP 413).", 1024, ge=1, le=1_000_000)
    max_new_tokens: int = describe("Causal LMs: the most tokens one `/generate` request may ask for.",
                                   256, ge=1, le=65536)
    max_adapters_per_replica: int = describe(
        "LoRA adapters served from one deployment: how many a replica keeps loaded (least recently "
        "used unloaded).", 4, ge=1, le=1024)

    @model_validator(mode="after")
    def _range(self) -> "ServeSpec":
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"serve.max_replicas: {self.max_replicas} is below serve.replicas {self.replicas}")
        return self
