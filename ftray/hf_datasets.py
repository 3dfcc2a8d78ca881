"""Hugging Face `datasets` inputs for `data.path` / `data.val_path`.

Two kinds: a local folder written by `save_to_disk` (a Dataset or a DatasetDict), and a Hub
dataset id (`owner/name`), loaded with `datasets.load_dataset` (from the Hub, or from the local
`datasets` cache when the Hub cannot be reached and `HF_HUB_OFFLINE=1`). Either way the split is
a memory-mapped Arrow table: `ftray.data` checks it like a file's rows, and Ray Data streams its
Arrow files (`read_arrow_files`), so nothing is loaded into memory that the job does not touch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pyarrow as pa

from ftray.schema import SpecError

if TYPE_CHECKING:
    import datasets

INSTALL = "pip install 'ftray[hf]'  (or: pip install 'datasets>=3')"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# What `save_to_disk` writes beside the Arrow files: a DatasetDict's split list, a Dataset's state.
_SAVED_MARKERS = ("dataset_dict.json", "state.json")


def is_saved_dataset(path: Path) -> bool:
    """True for a local folder that `Dataset.save_to_disk` or `DatasetDict.save_to_disk` wrote."""
    return path.is_dir() and any((path / m).is_file() for m in _SAVED_MARKERS)


def looks_like_hub_id(uri: str, suffixes) -> bool:
    """`owner/name` or `name` that is no local path and has no file extension ftray reads."""
    return ("://" not in uri and not Path(uri).expanduser().exists() and _HUB_ID.fullmatch(uri) is not None
            and Path(uri).suffix.lower() not in suffixes)


def _datasets(key: str, uri: str):
    try:
        import datasets
    except ImportError:
        raise SpecError(f"{key}: {uri!r} is a Hugging Face dataset, and the `datasets` library is not "
                        f"installed: {INSTALL}") from None
    datasets.disable_progress_bars()
    return datasets


def load_split(uri: str, key: str, split: str, split_key: str, local: bool) -> datasets.Dataset:
    """The split `split` of a saved folder (`local`) or a Hub id; SpecError naming the key when
    the dataset cannot be loaded or has no such split. A saved single Dataset is its one split."""
    datasets = _datasets(key, uri)
    if local:
        try:
            loaded = datasets.load_from_disk(uri)
        except (OSError, ValueError, KeyError) as e:
            raise SpecError(f"{key}: {uri}: cannot load as a saved Hugging Face dataset: {_line(e)}") from None
    else:
        try:
            loaded = datasets.load_dataset(uri)
        except Exception as e:  # noqa: BLE001 - no Hub, no such id, a bad cache: all of them bad input
            raise SpecError(f"{key}: {uri!r} is no local file or folder, and loading it as a Hugging Face "
                            f"Hub dataset failed ({type(e).__name__}: {_line(e)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise SpecError(f"{split_key}: split {split!r} not in {sorted(loaded)} ({key}: {uri})")
        loaded = loaded[split]
    if not isinstance(loaded, datasets.Dataset):
        raise SpecError(f"{key}: {uri}: a {type(loaded).__name__}, not a Dataset or DatasetDict")
    if loaded._indices is not None:  # a select/shuffle view: write its rows out once, in order
        loaded = loaded.flatten_indices()
    return loaded


def _line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def table(ds: datasets.Dataset) -> pa.Table:
    """The split's rows as a pyarrow Table (memory-mapped from its Arrow files: no copy)."""
    return ds.data.table


def arrow_files(ds: datasets.Dataset) -> list[str]:
    """The Arrow stream files that hold the split, in row order (empty for an in-memory dataset)."""
    return [f["filename"] for f in ds.cache_files]


def file_batches(path: str, columns: list[str]) -> Iterator[pa.Table]:
    """`columns` of one `datasets` Arrow stream file, record batch by record batch (memory-mapped)."""
    with pa.memory_map(path) as source:
        for batch in pa.ipc.open_stream(source):
            yield pa.Table.from_batches([batch]).select(columns)


class ArrowFileBatches:
    """map_batches UDF over a Dataset of file names: each file's `columns`, streamed in record
    batches (a generator), so a task holds one batch of a file at a time, never the file."""

    def __init__(self, columns: list[str]):
        self.columns = columns

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for path in batch.column("file").to_pylist():
            yield from file_batches(path, self.columns)


def read_arrow_files(ds: datasets.Dataset, columns: list[str]):
    """The split's `columns` as a streaming Ray Dataset: one read task per Arrow file."""
    import ray.data
    files = arrow_files(ds)
    if not files:  # an in-memory dataset has no files to stream: its table is already in this process
        return ray.data.from_arrow(table(ds).select(columns))
    return ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files)).map_batches(
        ArrowFileBatches(columns), batch_size=1, batch_format="pyarrow")
