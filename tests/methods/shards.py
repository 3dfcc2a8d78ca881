"""A worker's data for the numerics tests of a method's own epoch (meta) or estimate (EWC's
Fisher): a real Ray Dataset of the given columns, read through the same `iter_batches` /
`iter_torch_batches` calls a Train worker's shard answers. One block, so rows come in the order
given (the hand-computed answers assume it)."""

from __future__ import annotations

import numpy as np


def rows(**columns: list | np.ndarray):
    import ray.data
    n = len(next(iter(columns.values())))
    return ray.data.from_items([{k: v[i] for k, v in columns.items()} for i in range(n)], override_num_blocks=1)
