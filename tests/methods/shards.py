"""An in-memory stand-in for a worker's Ray Data shard, so that the numerics tests of a method's own
epoch (meta) or estimate (EWC's Fisher) run in a second without Ray. It hands out the same batches,
in the same formats, as the shard's `iter_torch_batches` / `iter_batches(batch_format="numpy")` do
for these rows; the jobs' end-to-end tests read through real Ray Data."""

from __future__ import annotations

import numpy as np
import torch


class Rows:
    def __init__(self, **columns: list | np.ndarray):
        self.columns = columns
        self.n = len(next(iter(columns.values())))

    def _chunks(self, batch_size: int):
        for start in range(0, self.n, batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.columns.items()}

    def iter_torch_batches(self, batch_size: int, device="cpu", **_):
        for chunk in self._chunks(batch_size):
            yield {k: torch.as_tensor(np.array(v), device=device) for k, v in chunk.items()}

    def iter_batches(self, batch_size: int, batch_format: str, local_shuffle_buffer_size=None, **_):
        # Unshuffled, like a shard with `data.shuffle_buffer: 0`, which these tests' specs set.
        assert batch_format == "numpy" and not local_shuffle_buffer_size
        for chunk in self._chunks(batch_size):  # a row per task: its rows' arrays, as object arrays
            yield {k: np.array(list(v) + [None], dtype=object)[:-1] for k, v in chunk.items()}
