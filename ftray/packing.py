"""Packing language-model examples into `model.max_length` rows without letting them mix.

`data.packing: true` puts several whole examples in each row (first-fit decreasing within one
`map_batches` batch: an example is never cut across rows) and keeps them apart, as if each were
its own row:

- `position_ids` restart at 0 at every example, so each example sees the positions it would alone;
- the first token of every example carries no label: `task_loss` scores position i against label
  i + 1, and the previous example's last token must not be asked to predict it (alone, the first
  token of a row is never a target either);
- attention: the model is given `position_ids` and no `attention_mask` (`ftray.models.hf`), from
  which transformers (5.x `masking_utils.find_packed_sequence_indices`) builds a block-diagonal
  causal mask for sdpa, eager and flex attention, and flash-attention's varlen kernel its
  sequence boundaries. The padding at a row's end is one more block of its own, with no labels.
"""

from __future__ import annotations

import numpy as np


def first_fit_decreasing(lengths: list[int], limit: int) -> list[list[int]]:
    """Example indices per row: longest first, each into the first row with room left. Rows keep
    their examples in input order. Every length must be in 1..limit."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    room = np.zeros(0, np.int64)  # free tokens of each row opened so far
    rows: list[list[int]] = []
    for i in order:
        fits = np.flatnonzero(room >= lengths[i])
        if fits.size:
            r = int(fits[0])
        else:
            r, room = len(rows), np.append(room, limit)
            rows.append([])
        rows[r].append(i)
        room[r] -= lengths[i]
    return [sorted(row) for row in rows]


def pack(examples: list[tuple[list[int], list[int]]], limit: int, pad_id: int) -> dict:
    """Whole examples (token ids, labels with -100 where no loss; each at most `limit` tokens) as
    `input_ids`, `labels` and `position_ids` rows of width `limit`. Empty examples are dropped
    (nothing to learn from them)."""
    examples = [e for e in examples if e[0]]
    too_long = next((len(ids) for ids, _ in examples if len(ids) > limit), None)
    if too_long is not None:
        raise ValueError(f"an example of {too_long} tokens does not fit a row of {limit}")
    rows = first_fit_decreasing([len(ids) for ids, _ in examples], limit)
    out = {"input_ids": np.full((len(rows), limit), pad_id, np.int64),
           "labels": np.full((len(rows), limit), -100, np.int64),
           "position_ids": np.zeros((len(rows), limit), np.int64)}
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            ids, labels = examples[i]
            end = start + len(ids)
            out["input_ids"][r, start:end] = ids
            out["labels"][r, start + 1:end] = labels[1:]  # see the module docstring
            out["position_ids"][r, start:end] = np.arange(len(ids))
            start = end
        out["position_ids"][r, start:] = np.arange(limit - start)  # the padding: a block of its own
    return out


def segments(position_ids: np.ndarray) -> list[list[tuple[int, int]]]:
    """(start, end) of each block in each packed row, read back from its position ids (a block
    starts wherever the position is 0)."""
    out = []
    for row in np.asarray(position_ids):
        starts = np.flatnonzero(row == 0).tolist()
        out.append(list(zip(starts, starts[1:] + [len(row)])))
    return out
