"""`run:`: the run's name, storage, seed and fault tolerance."""

from __future__ import annotations

from ftray.schema import Strict, describe


class RunSpec(Strict):
    name: str = describe("Run name: the folder under `storage_path`; re-running it resumes.",
                         pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    storage_path: str = describe("Where run folders live: a local path or a URI (s3://, gs://, ...).",
                                 "runs")
    seed: int = describe("Seed for weights, data split, shuffling and dropout.", 0, ge=0)
    max_failures: int = describe("Worker-group restarts from the last checkpoint before giving up.",
                                 0, ge=0, le=1000)
    keep_checkpoints: int = describe("Most recent checkpoints kept.", 2, ge=1)
