"""Ray Data inputs: Parquet, JSONL or CSV from a local path or any URI a pyarrow filesystem reads.

Two halves. `inspect` runs in the driver before Ray starts: it reads only the columns the job
needs with pyarrow and turns every problem (missing file, absent column, empty data, NaN, labels
outside the classes) into a SpecError naming the file and the row. `ray_datasets` then builds the
Ray Data pipelines the workers stream from: read, split, and rows turned into tensors with
`map_batches`, so preprocessing scales with the cluster.
"""

from __future__ import annotations

import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.json as pajson

from ftray import chat, hf_datasets
from ftray.models.base import ModelInfo
from ftray.packing import pack
from ftray.schema import SpecError

if TYPE_CHECKING:
    from ftray.spec.job import JobSpec

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl",
           ".ndjson": "jsonl", ".csv": "csv"}
_ARROW_FORMAT = {"parquet": "parquet", "jsonl": "json", "csv": "csv"}


@dataclass
class Source:
    """One data location, resolved: the key it came from, its filesystem and path, its format
    (`hf`: a Hugging Face dataset's `split`, loaded as `dataset`), and its size on disk."""
    key: str
    uri: str
    fs: pafs.FileSystem
    path: str
    format: str
    nbytes: int = 0
    split: str | None = None
    dataset: Any = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """How messages name this source: the key and the location (and the split)."""
        return f"{self.key}: {self.uri}" + (f" [split {self.split!r}]" if self.split else "")


@dataclass
class DataPlan:
    """What `inspect` learned: the model-shaping facts and the resolved sources."""
    info: ModelInfo
    train: Source
    val: Source | None
    class_index: dict = field(default_factory=dict)
    tables: list = field(default_factory=list, repr=False)  # (where, table) as read by inspect
    # Over MATERIALIZE_BYTES on disk the data streams: `tables` then hold the first SAMPLE_ROWS
    # rows of each source only, and `row_counts` the sources' row counts.
    streamed: bool = False
    row_counts: list = field(default_factory=list)
    nbytes: int = 0  # as read (the tables), or on disk when streamed

    @property
    def train_table(self) -> pa.Table:
        """The training rows as read by `inspect` (validation rows are split off this table)."""
        return self.tables[0][1]

    def batches(self, columns: list[str]) -> Iterator[tuple[str, int, pa.Table]]:
        """Every row of `columns` as (where, number of the first row, rows): the tables `inspect`
        read, or for streamed data each source read again a batch at a time (bounded memory)."""
        if not self.streamed:
            yield from ((where, 0, t) for where, t in self.tables)
            return
        for src in (self.train, self.val):
            start = 0
            for batch in _source_batches(src, columns):
                yield src.where, start, batch
                start += batch.num_rows


def resolve(uri: str, fmt: str, key: str, split: str | None = None, split_key: str = "data.split") -> Source:
    """Where `uri` is and what it holds; SpecError naming `key` if it cannot be read. A folder that
    `save_to_disk` wrote, or (with `fmt` auto) a Hub id that is no local path, is a Hugging Face
    dataset, of which `split` is read (`split_key` names the key that chose it)."""
    local_hf = "://" not in uri and hf_datasets.is_saved_dataset(Path(uri).expanduser())
    if local_hf or (fmt == "auto" and hf_datasets.looks_like_hub_id(uri, FORMATS)):
        return _resolve_hf(uri, key, split or "train", split_key, local_hf)
    if split is not None:
        raise SpecError(f"{split_key}: {split!r} names a split of a Hugging Face dataset; {key} {uri!r} is a "
                        "file or folder of files (give the validation data as data.val_path, or data.val_fraction)")
    if "://" in uri:
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise SpecError(f"{key}: cannot open {uri!r}: {e}") from None
    else:
        fs, path = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SpecError(f"{key}: {uri!r}: no such file or folder")
    if fmt == "auto":
        suffix = Path(path).suffix.lower()
        if info.type == pafs.FileType.Directory:
            children = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            suffix = next((Path(c.path).suffix.lower() for c in children
                           if Path(c.path).suffix.lower() in FORMATS), "")
        if suffix not in FORMATS:
            raise SpecError(f"{key}: cannot tell the format of {uri!r}; set data.format "
                            f"(one of parquet, jsonl, csv)")
        fmt = FORMATS[suffix]
    return Source(key, uri if "://" in uri else path, fs, path, fmt, nbytes=sum(size for _, size in _files(fs, path)))


def _resolve_hf(uri: str, key: str, split: str, split_key: str, local: bool) -> Source:
    ds = hf_datasets.load_split(uri, key, split, split_key, local)
    path = str(Path(uri).expanduser().resolve()) if local else uri
    nbytes = sum(Path(f).stat().st_size for f in hf_datasets.arrow_files(ds)) or hf_datasets.table(ds).nbytes
    return Source(key, path, pafs.LocalFileSystem(), path, "hf", nbytes=nbytes, split=split, dataset=ds)


def _files(fs: pafs.FileSystem, path: str) -> list[tuple[str, int]]:
    """(path, size) of the data files at `path`: the file, or a folder's files in name order
    (hidden and `_` files skipped, as pyarrow's datasets skip them)."""
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return [(path, info.size)]
    children = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted((c.path, c.size) for c in children if c.type == pafs.FileType.File
                  and not any(part.startswith((".", "_")) for part in Path(c.path[len(path):]).parts))


def _check_columns(src: Source, names: list[str], columns: list[str]) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise SpecError(f"{src.where}: no column {missing[0]!r} (columns: {', '.join(names)})")


def _scan(src: Source, columns: list[str], read):
    """`read(dataset)` over a file source's pyarrow dataset, after checking its `columns`; read
    errors as a SpecError naming the source."""
    try:
        dataset = pads.dataset(src.path, filesystem=src.fs, format=_ARROW_FORMAT[src.format])
        _check_columns(src, dataset.schema.names, columns)
        return read(dataset)
    except SpecError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        raise SpecError(f"{src.where}: cannot read as {src.format}: {e}".splitlines()[0]) from None


def read_table(src: Source, columns: list[str]) -> pa.Table:
    """Read `columns` of a source with pyarrow (projection: Parquet reads only those)."""
    if src.format == "hf":
        _check_columns(src, src.dataset.column_names, columns)
        return hf_datasets.table(src.dataset).select(columns)
    return _scan(src, columns, lambda d: d.to_table(columns=columns))


def read_head(src: Source, columns: list[str], rows: int) -> pa.Table:
    """The first `rows` rows of `columns` (a JSONL or CSV file is parsed only that far)."""
    if src.format == "hf":
        return read_table(src, columns).slice(0, rows)
    return _scan(src, columns, lambda d: d.head(rows, columns=columns))


def count_rows(src: Source) -> int:
    """The source's row count: Parquet's and Arrow's metadata, or a streamed scan (bounded memory)."""
    if src.format == "hf":
        return src.dataset.num_rows
    return _scan(src, [], lambda d: d.count_rows())


def _source_batches(src: Source, columns: list[str]) -> Iterator[pa.Table]:
    if src.format == "hf":
        yield from (pa.Table.from_batches([b]) for b in read_table(src, columns).to_batches(max_chunksize=4096))
        return
    for batch in _scan(src, columns, lambda d: d.to_batches(columns=columns, batch_size=4096)):
        yield pa.Table.from_batches([batch])


def text_columns(spec: JobSpec) -> list[str]:
    d = spec.data
    if d.chosen:  # preference pairs: the prompt (text or turns) and its two answers
        return [d.messages or d.prompt, d.chosen, d.rejected]
    if spec.method.prompts:  # prompts the method answers itself, and the expected answers
        return [d.messages or d.prompt] + ([d.answer] if d.answer else [])
    if d.messages:
        return [d.messages]
    return [d.text] if d.text else [d.prompt, d.response]


def needed_columns(spec: JobSpec) -> list[str]:
    d = spec.data
    if spec.model.name == "multimodal":
        by_modality = {"image": [d.image], "text": [d.text], "tabular": list(d.features)}
        cols = [c for m in spec.model.modalities for c in by_modality[m]]
    else:
        cols = list(d.features) if spec.model.name == "mlp" else text_columns(spec)
    if d.task != "causal_lm":
        cols.append(d.label)
    return cols


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


# What a null cell was in the file: pyarrow reads an empty CSV cell and markers such as NA, n/a,
# null or nan as null, so "empty" would misname a cell that reads `n/a`.
NO_VALUE = "an empty cell, null, or a missing-value marker such as NA or n/a"


def _not_numbers(col: pa.Array, name: str, where: str) -> str:
    """The message for a scalar feature column that is not numeric: its first value that is no
    number, with its row (a column of numbers written as text names its type only)."""
    for i, value in enumerate(col.to_pylist()):
        try:
            float(value)
        except (TypeError, ValueError):
            return f"{where}: row {i}: feature {name!r} is {value!r}, not a number (column type {col.type})"
    return f"{where}: feature {name!r} has type {col.type}, not numbers"


def feature_matrix(table: pa.Table, features: list[str], where: str) -> np.ndarray:
    """Numeric features as a float32 (rows, width) matrix; SpecError naming the first bad row."""
    parts = []
    for name in features:
        col = table.column(name).combine_chunks()
        if col.null_count:
            raise SpecError(f"{where}: row {_first_bad_row(col.is_null().to_numpy(zero_copy_only=False))}: "
                            f"feature {name!r} has no value ({NO_VALUE})")
        if _is_list(col.type):
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            if len(set(lengths.tolist())) > 1:
                bad = _first_bad_row(lengths != lengths[0])
                raise SpecError(f"{where}: row {bad}: feature {name!r} has {lengths[bad]} values, "
                                f"row 0 has {lengths[0]}")
            values = pc.list_flatten(col)
            if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
                raise SpecError(f"{where}: feature {name!r} holds {values.type}, not numbers")
            parts.append(values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), -1))
        elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type):
            parts.append(col.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1))
        else:
            raise SpecError(_not_numbers(col, name, where))
    x = np.concatenate(parts, axis=1) if parts else np.zeros((table.num_rows, 0), np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise SpecError(f"{where}: row {_first_bad_row(~finite)}: a feature is NaN or infinite")
    return x


def label_classes(spec: JobSpec, tables: list[tuple[str, pa.Table]]) -> list:
    """The class list in head order; SpecError naming a row whose label is not in it."""
    d = spec.data
    columns = [(where, t.column(d.label).combine_chunks()) for where, t in tables]
    for where, col in columns:
        if col.null_count:
            raise SpecError(f"{where}: row {_first_bad_row(col.is_null().to_numpy(zero_copy_only=False))}: "
                            f"label {d.label!r} has no value ({NO_VALUE})")
        if not (pa.types.is_integer(col.type) or pa.types.is_string(col.type)
                or pa.types.is_large_string(col.type)):
            raise SpecError(f"{where}: labels in {d.label!r} have type {col.type}; classification needs "
                            "integer or string labels (use data.task: regression for real targets)")
    if d.classes is not None:
        classes = list(d.classes)
    elif all(pa.types.is_integer(c.type) for _, c in columns):
        values = np.concatenate([c.to_numpy(zero_copy_only=False) for _, c in columns])
        if (values < 0).any():
            for where, col in columns:
                v = col.to_numpy(zero_copy_only=False)
                if (v < 0).any():
                    raise SpecError(f"{where}: row {_first_bad_row(v < 0)}: label {int(v[v < 0][0])} "
                                    "is negative; integer labels must be 0..K-1 (or list data.classes)")
        classes = list(range(int(values.max()) + 1))
    else:
        _check_label_strings(columns, d.label)
        classes = sorted({str(v) for _, c in columns for v in c.to_pylist()})
    if len(classes) < 2:
        raise SpecError(f"data.classes: classification needs at least 2 classes, got {classes}")
    known = set(classes)
    for where, col in columns:
        values = col.to_pylist()
        bad = next((i for i, v in enumerate(values) if v not in known), None)
        if bad is not None:
            raise SpecError(f"{where}: row {bad}: label {values[bad]!r} is not one of the classes "
                            f"{classes if len(classes) <= 20 else str(classes[:20]) + '...'}")
    return classes


def _check_label_strings(columns: list[tuple[str, pa.Array]], label: str) -> None:
    """Inferred string classes: refuse a blank label (it would become a class ''), naming its row;
    warn about labels that differ only by case or surrounding spaces (`Dog `, `dog`), which become
    separate classes."""
    first: dict[str, tuple[str, str, int]] = {}  # folded label -> (label, where, row) of its first use
    warned = set()
    for where, col in columns:
        for row, value in enumerate(col.to_pylist()):
            value = str(value)
            if not value.strip():
                raise SpecError(f"{where}: row {row}: label {label!r} is blank ({value!r}); give every row a class")
            seen = first.setdefault(value.strip().casefold(), (value, where, row))
            if seen[0] != value and (seen[0], value) not in warned:
                warned.add((seen[0], value))
                at = f"row {seen[2]}" if seen[1] == where else f"{seen[1]}, row {seen[2]}"
                print(f"ftray: warning: {where}: row {row}: label {value!r} differs from {seen[0]!r} "
                      f"({at}) only by case or surrounding spaces; they are separate "
                      "classes (clean the column, or list data.classes)", file=sys.stderr, flush=True)


SAMPLE_ROWS = 1000  # rows of each source that `inspect` checks when the data streams


def sources(spec: JobSpec) -> tuple[Source, Source | None]:
    """The training source and the validation one (None: a `val_fraction` split of the training
    rows): files, or splits of Hugging Face datasets (`data.split`, `data.val_split`)."""
    d = spec.data
    split = None if d.split == "train" else d.split  # the default names no split of a file
    train = resolve(d.path, d.format, "data.path", split, "data.split")
    if d.val_path:
        val_split, key = (d.val_split, "data.val_split") if d.val_split else (split, "data.split")
        return train, resolve(d.val_path, d.format, "data.val_path", val_split, key)
    if d.val_split:
        if d.val_split == d.split:
            raise SpecError(f"data.val_split: {d.val_split!r} is data.split too: validation would be the training rows")
        return train, resolve(d.path, d.format, "data.path", d.val_split, "data.val_split")
    return train, None


def _read_sources(spec: JobSpec, srcs: list[Source]) -> tuple[list, bool, list[int], int]:
    """(tables, streamed, row counts, bytes): every row of the needed columns, or, for data over
    MATERIALIZE_BYTES on disk, the first SAMPLE_ROWS of each source and its counted rows (the
    driver never holds the data)."""
    cols, total = needed_columns(spec), sum(s.nbytes for s in srcs)
    if total <= MATERIALIZE_BYTES:
        tables = [(s.where, _read_checked(spec, s, cols)) for s in srcs]
        return tables, False, [t.num_rows for _, t in tables], sum(t.nbytes for _, t in tables)
    if len(srcs) == 1:
        raise SpecError(f"{srcs[0].where}: {total / 2**30:.2f} GiB on disk, more than the "
                        f"{MATERIALIZE_BYTES / 2**30:.2f} GiB that the driver splits by data.val_fraction; "
                        "give the validation data as data.val_path (or data.val_split of a Hugging Face dataset)")
    return [(s.where, read_head(s, cols, SAMPLE_ROWS)) for s in srcs], True, [count_rows(s) for s in srcs], total


def inspect(spec: JobSpec) -> DataPlan:
    """Check the job's data without Ray and return what shapes the model. Raises SpecError.
    Streamed data (over MATERIALIZE_BYTES) is checked on its first rows (and, for classes, its
    whole label column); the workers meet any later bad row."""
    d = spec.data
    train, val = sources(spec)
    srcs = [train] + ([val] if val else [])
    tables, streamed, counts, nbytes = _read_sources(spec, srcs)
    for (where, _), n in zip(tables, counts):
        if n == 0:
            raise SpecError(f"{where}: no rows")
    train_rows = counts[0]
    info = ModelInfo(task=d.task)
    for where, t in tables:
        if spec.model.name == "multimodal":
            _check_multimodal(spec, t, where, info)
        elif spec.model.name == "mlp":
            _check_features(spec, t, where, info)
        elif d.chosen:
            _check_pairs(spec, t, where)
        elif spec.method.prompts:
            _check_prompts(spec, t, where)
        elif d.messages:
            chat.check_rows(t.column(d.messages).to_pylist(), d.messages, where)
        else:
            for name in text_columns(spec):
                _check_text(t, name, where)
        if d.task == "regression":
            y = t.column(d.label)
            if not (pa.types.is_integer(y.type) or pa.types.is_floating(y.type)):
                raise SpecError(f"{where}: regression targets in {d.label!r} have type {y.type}, not numbers")
            arr = y.to_numpy(zero_copy_only=False).astype(np.float64)
            if not np.isfinite(arr).all():
                raise SpecError(f"{where}: row {_first_bad_row(~np.isfinite(arr))}: target is NaN or infinite")
    class_index = {}
    if d.task == "classification":
        info.classes = label_classes(spec, [(s.where, read_table(s, [d.label])) for s in srcs] if streamed else tables)
        class_index = {c: i for i, c in enumerate(info.classes)}
    n_val = round(train_rows * d.val_fraction)
    if not val and (n_val < 1 or n_val >= train_rows):
        raise SpecError(f"data.val_fraction: {d.val_fraction} of {train_rows} rows leaves no "
                        f"{'validation' if n_val < 1 else 'training'} rows")
    plan = DataPlan(info, train, val, class_index, tables=tables, streamed=streamed, row_counts=counts, nbytes=nbytes)
    if d.normalize != "none":
        fit_normalize(spec, plan)
    return plan


def fit_normalize(spec: JobSpec, plan: DataPlan) -> None:
    """`data.normalize`: each feature value's shift and scale, fitted on the training rows only
    (those `split_tables` gives the workers), into `plan.info` (the model applies them)."""
    if plan.streamed:
        raise SpecError(f"data.normalize: {plan.train.where}: the data streams ({plan.nbytes / 2**30:.2f} GiB "
                        "on disk); scaling is fitted on rows the driver reads whole: scale the columns "
                        "beforehand, or set data.normalize: none")
    x = feature_matrix(split_tables(spec, plan)[0], spec.data.features, plan.train.where).astype(np.float64)
    if spec.data.normalize == "standard":
        shift, scale = x.mean(axis=0), x.std(axis=0)
    else:
        shift, scale = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
    scale[scale == 0] = 1.0  # a constant feature: shifted to 0, not divided by 0
    plan.info.feature_shift, plan.info.feature_scale = shift.tolist(), scale.tolist()


def _read_checked(spec: JobSpec, src: Source, cols: list[str]) -> pa.Table:
    """`read_table`, except that a chat JSONL file pyarrow refuses is read again line by line to
    name the row whose turns are wrong (pyarrow's message gives no usable row)."""
    try:
        return read_table(src, cols)
    except SpecError:
        if spec.data.messages and src.format == "jsonl" and src.fs.get_file_info(src.path).is_file:
            chat.explain_unreadable_jsonl(src.fs, src.path, src.key, spec.data.messages)
        raise


def _check_features(spec: JobSpec, t: pa.Table, where: str, info: ModelInfo) -> None:
    width = feature_matrix(t, spec.data.features, where).shape[1]
    if info.in_features and width != info.in_features:
        raise SpecError(f"{where}: {width} feature values per row, training data has {info.in_features}")
    info.in_features = width


def _check_pairs(spec: JobSpec, t: pa.Table, where: str) -> None:
    """Preference rows: a prompt (text, or chat turns that an assistant answer may follow) and two
    different answers to it."""
    d = spec.data
    for name in (d.chosen, d.rejected) + (() if d.messages else (d.prompt,)):
        _check_text(t, name, where)
    chosen, rejected = t.column(d.chosen).to_pylist(), t.column(d.rejected).to_pylist()
    if d.messages:
        for i, (turns, answer) in enumerate(zip(t.column(d.messages).to_pylist(), chosen)):
            problem = chat.turns_problem(turns if not isinstance(turns, list) else
                                         turns + [{"role": "assistant", "content": answer}])
            if problem:
                raise SpecError(f"{where}: row {i}: {d.messages!r} {problem}")
    same = next((i for i, (c, r) in enumerate(zip(chosen, rejected)) if c == r), None)
    if same is not None:
        raise SpecError(f"{where}: row {same}: {d.chosen!r} and {d.rejected!r} are the same answer "
                        f"({chosen[same][:40]!r}); a pair needs two different answers")


def _check_prompts(spec: JobSpec, t: pa.Table, where: str) -> None:
    """Prompt rows: a prompt (text, or chat turns for the model to answer) and, if the data names
    one, an expected answer in every row."""
    d = spec.data
    if d.messages:  # turns the model's answer can follow: as if followed by one
        for i, turns in enumerate(t.column(d.messages).to_pylist()):
            problem = chat.turns_problem(turns if not isinstance(turns, list) else
                                         turns + [{"role": "assistant", "content": "answer"}])
            if problem:
                raise SpecError(f"{where}: row {i}: {d.messages!r} {problem}")
    else:
        _check_text(t, d.prompt, where)
    if d.answer and t.column(d.answer).null_count:
        raise SpecError(f"{where}: row {_first_bad_row(t.column(d.answer).is_null().to_numpy(zero_copy_only=False))}: "
                        f"answer {d.answer!r} is empty")


def _check_text(t: pa.Table, name: str, where: str) -> None:
    col = t.column(name)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise SpecError(f"{where}: text column {name!r} has type {col.type}, not strings")
    if col.null_count:
        raise SpecError(f"{where}: row {_first_bad_row(col.is_null().to_numpy(zero_copy_only=False))}: "
                        f"text {name!r} is empty")


def _check_multimodal(spec: JobSpec, t: pa.Table, where: str, info: ModelInfo) -> None:
    """Each modality's column: images all of one shape (and the same in validation data), text
    strings, tabular features of one width."""
    d, modalities = spec.data, spec.model.modalities
    if "image" in modalities:
        shape = list(image_array(t, d.image, where).shape[1:])
        if info.image_shape and shape != info.image_shape:
            raise SpecError(f"{where}: images in {d.image!r} have shape {shape}, the training data's have "
                            f"{info.image_shape}")
        info.image_shape = shape
    if "text" in modalities:
        _check_text(t, d.text, where)
    if "tabular" in modalities:
        _check_features(spec, t, where, info)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def image_array(table: pa.Table, column: str, where: str) -> np.ndarray:
    """An image column (nested lists, HxW or CxHxW per row) as float32 (rows, C, H, W); SpecError
    naming the first row whose shape differs from row 0's, or that is empty, NaN or not numbers."""
    col = table.column(column).combine_chunks()
    values, per_row, shape = col, 1, []
    while _is_list(values.type):
        if values.null_count:  # a missing image, or a missing line inside one
            bad = _first_bad_row(values.is_null().to_numpy(zero_copy_only=False)) // per_row
            raise SpecError(f"{where}: row {bad}: image {column!r} is empty or has an empty part")
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            i = _first_bad_row(lengths != lengths[0])
            raise SpecError(f"{where}: row {i // per_row}: image {column!r} has {lengths[i]} entries along "
                            f"axis {len(shape)}, row 0 has {lengths[0]} (all images need one shape)")
        size = int(lengths[0]) if len(lengths) else 0
        if size == 0 and len(lengths):
            raise SpecError(f"{where}: row 0: image {column!r} has no entries along axis {len(shape)}")
        shape.append(size)
        per_row *= size
        values = pc.list_flatten(values)
    if len(shape) not in (2, 3):
        raise SpecError(f"{where}: image column {column!r} holds {len(shape)}-dimensional values; images are "
                        f"HxW or CxHxW nested lists of numbers")
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise SpecError(f"{where}: image column {column!r} holds {values.type}, not numbers")
    if values.null_count:
        bad = _first_bad_row(values.is_null().to_numpy(zero_copy_only=False)) // per_row
        raise SpecError(f"{where}: row {bad}: image {column!r} has an empty pixel")
    pixels = values.to_numpy(zero_copy_only=False).astype(np.float32)
    if not np.isfinite(pixels).all():
        raise SpecError(f"{where}: row {_first_bad_row(~np.isfinite(pixels)) // per_row}: image {column!r} "
                        "has a NaN or infinite pixel")
    return pixels.reshape(len(col), *([1] if len(shape) == 2 else []), *shape)


_WORD = re.compile(r"\w+")


def hashed_words(texts: list[str], buckets: int, max_length: int) -> np.ndarray:
    """Texts as (rows, max_length) word ids for an embedding bag, by the hashing trick: lower-cased
    words hashed (crc32, stable across processes, unlike `hash`) into 1..buckets-1; 0 pads."""
    out = np.zeros((len(texts), max_length), np.int64)
    for i, text in enumerate(texts):
        ids = [1 + zlib.crc32(w.encode()) % (buckets - 1) for w in _WORD.findall(text.lower())[:max_length]]
        out[i, :len(ids)] = ids
    return out


def check_lengths(spec: JobSpec, plan: DataPlan, tokenizer_source: str) -> None:
    """Tokenize every example once in the driver so that an example the truncation rule cannot
    handle stops the job (exit 2, naming the row) before Ray starts. Plain text under `right` or
    `left` truncation always fits, so it is not tokenized here (seconds on large data). Streamed
    data is read again a batch at a time: memory stays bounded, the time is one tokenizing pass."""
    if not (spec.data.prompt or spec.data.messages) and spec.data.truncation != "none":
        return
    from ftray.models.hf import load_tokenizer
    tok = load_tokenizer(tokenizer_source)
    if spec.data.messages:
        chat.check_tokenizer(tok, spec, tokenizer_source)
    fn = encode_pair if spec.data.chosen else encode
    if spec.method.prompts:
        fn = lambda tok, spec, prompt, *answer: generation_prompt(tok, spec, prompt)  # noqa: E731
    for where, first, table in plan.batches(text_columns(spec)):
        rows = zip(*(table.column(c).to_pylist() for c in text_columns(spec)))
        for i, row in enumerate(rows, first):
            try:
                fn(tok, spec, *row)
            except ValueError as e:
                raise SpecError(f"{where}: row {i}: {e}") from None


def encode(tok, spec: JobSpec, *texts) -> tuple[list[int], list[int] | None]:
    """Token ids (and LM labels, -100 where no loss) of one example under `data.truncation`: its
    text, its prompt and response, or its chat turns (`ftray.chat`)."""
    d, limit = spec.data, spec.model.max_length
    if d.messages:
        return chat.encode_chat(tok, spec, texts[0])
    if not d.prompt:
        return _fit_text(tok(texts[0], add_special_tokens=True)["input_ids"], spec)
    prompt, response = texts
    if tok.chat_template:
        turn = [{"role": "user", "content": prompt}]
        p_text = tok.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(turn + [{"role": "assistant", "content": response}], tokenize=False)
        p = tok(p_text, add_special_tokens=False)["input_ids"]
        r = tok(full[len(p_text):], add_special_tokens=False)["input_ids"]
    else:
        p = tok(prompt, add_special_tokens=True)["input_ids"]
        end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        r = tok(response, add_special_tokens=False)["input_ids"] + ([end] if end is not None else [])
    over = len(p) + len(r) - limit
    if over > 0:
        if d.truncation == "none":
            raise ValueError(f"prompt + response are {len(p) + len(r)} tokens, model.max_length is {limit} "
                             "and data.truncation is none")
        if d.truncation == "right":
            if len(p) >= limit:
                raise ValueError(f"the prompt alone is {len(p)} tokens, model.max_length is {limit}: no response "
                                 "token would be learned (use data.truncation: left or a larger max_length)")
            r = r[:limit - len(p)]
        else:
            p = p[min(over, len(p) - 1):]
            r = r[:limit - len(p)]
    return p + r, [-100] * len(p) + r


def encode_pair(tok, spec: JobSpec, prompt, chosen: str, rejected: str) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels of a preference row's two examples, (prompt, chosen) and (prompt,
    rejected), each encoded as an SFT row is: labels on the answer only. A chat prompt (turns)
    gets the answer as its last assistant turn, and only that turn carries labels."""
    if not spec.data.messages:
        return [encode(tok, spec, prompt, answer) for answer in (chosen, rejected)]
    last = spec.model_copy(update={"data": spec.data.model_copy(update={"train_on": "last_assistant"})})
    return [chat.encode_chat(tok, last, prompt + [{"role": "assistant", "content": answer}])
            for answer in (chosen, rejected)]


def prompt_ids(tok, prompt: str) -> list[int]:
    """A prompt's token ids as `encode` starts an example with them (chat template with the
    generation prompt, else the tokenizer's special tokens): what a causal LM generates after."""
    if tok.chat_template:
        turn = [{"role": "user", "content": prompt}]
        return tok(tok.apply_chat_template(turn, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"]
    return tok(prompt, add_special_tokens=True)["input_ids"]


def generation_prompt(tok, spec: JobSpec, prompt) -> list[int]:
    """The token ids a model generates its answer after: a prompt as `prompt_ids` encodes it, or
    chat turns rendered with the generation prompt. They leave `method.max_new_tokens` of
    `model.max_length` free (`data.truncation: left` cuts the prompt's start; otherwise ValueError)."""
    if spec.data.messages:
        ids = tok(chat.render(tok, chat.template_for(tok, spec), prompt, generation_prompt=True),
                  add_special_tokens=False)["input_ids"]
    else:
        ids = prompt_ids(tok, prompt)
    room = spec.model.max_length - spec.method.max_new_tokens
    if room < 1:
        raise ValueError(f"model.max_length {spec.model.max_length} leaves no room for a prompt before "
                         f"method.max_new_tokens {spec.method.max_new_tokens}")
    if len(ids) > room:
        if spec.data.truncation != "left":
            raise ValueError(f"the prompt is {len(ids)} tokens; model.max_length {spec.model.max_length} minus "
                             f"method.max_new_tokens {spec.method.max_new_tokens} leaves {room} "
                             "(data.truncation: left cuts its start)")
        ids = ids[-room:]
    return ids


def _fit_text(ids: list[int], spec: JobSpec) -> tuple[list[int], list[int] | None]:
    """`encode` of plain text, from its token ids."""
    d, limit = spec.data, spec.model.max_length
    if len(ids) > limit:
        if d.truncation == "none":
            raise ValueError(f"{len(ids)} tokens, model.max_length is {limit} (data.truncation: none)")
        ids = ids[:limit] if d.truncation == "right" else ids[-limit:]
    return ids, (list(ids) if d.task == "causal_lm" else None)


# ------------------------------------------------------------------------------- Ray Data side
class TabularRows:
    """map_batches UDF: feature columns -> float32 `x`, labels -> class ids or float `y`
    (`labelled=False`: rows to predict, without labels)."""

    def __init__(self, spec: JobSpec, class_index: dict, labelled: bool = True):
        self.features, self.label, self.task = spec.data.features, spec.data.label, spec.data.task
        self.class_index, self.labelled = class_index, labelled

    def __call__(self, batch: pa.Table) -> dict:
        out = {"x": feature_matrix(batch, self.features, "batch")}
        if self.labelled:
            out.update(labels(batch, self.label, self.task, self.class_index))
        return out


class TokenizedRows:
    """map_batches UDF: text (or prompt + response) -> padded `input_ids`/`attention_mask`, plus
    `y` for classifiers or `labels` (-100 where there is no loss) for language models; with
    `data.packing`, a batch's whole examples share `max_length` rows, kept apart by `position_ids`
    (`ftray.packing`); `labelled=False`: rows to predict, without `y`."""

    def __init__(self, spec: JobSpec, class_index: dict, tokenizer_source: str, labelled: bool = True):
        self.spec, self.class_index, self.source, self.labelled = spec, class_index, tokenizer_source, labelled

    def __call__(self, batch: pa.Table) -> dict:
        from ftray.models.hf import load_tokenizer
        tok, spec, limit = load_tokenizer(self.source), self.spec, self.spec.model.max_length
        if spec.data.prompt or spec.data.messages:
            examples = [encode(tok, spec, *row) for row in
                        zip(*(batch.column(c).to_pylist() for c in text_columns(spec)))]
        else:  # one tokenizer call per batch (its batch path: parallel where TOKENIZERS_PARALLELISM allows)
            encoded = tok(batch.column(spec.data.text).to_pylist(), add_special_tokens=True)["input_ids"]
            examples = [_fit_text(row, spec) for row in encoded]
        if spec.data.packing:
            # No attention_mask: the model reads the example boundaries from position_ids.
            return pack(examples, limit, tok.pad_token_id)
        n = len(examples)
        out = {"input_ids": np.full((n, limit), tok.pad_token_id, np.int64),
               "attention_mask": np.zeros((n, limit), np.int64)}
        if spec.data.task == "causal_lm":
            out["labels"] = np.full((n, limit), -100, np.int64)
        for i, (ids, lab) in enumerate(examples):
            out["input_ids"][i, :len(ids)] = ids
            out["attention_mask"][i, :len(ids)] = 1
            if lab is not None:
                out["labels"][i, :len(lab)] = lab
        if spec.data.task != "causal_lm" and self.labelled:
            out.update(labels(batch, spec.data.label, spec.data.task, self.class_index))
        return out


class PairRows:
    """map_batches UDF for preference pairs: `chosen_` and `rejected_` + `input_ids`,
    `attention_mask`, `labels` (the answer's tokens; -100 elsewhere), each padded to max_length."""

    PARTS = ("chosen", "rejected")

    def __init__(self, spec: JobSpec, tokenizer_source: str):
        self.spec, self.source = spec, tokenizer_source

    def __call__(self, batch: pa.Table) -> dict:
        from ftray.models.hf import load_tokenizer
        tok, spec, limit = load_tokenizer(self.source), self.spec, self.spec.model.max_length
        rows = [encode_pair(tok, spec, *row) for row in zip(*(batch.column(c).to_pylist() for c in text_columns(spec)))]
        n, out = len(rows), {}
        for k, part in enumerate(self.PARTS):
            ids_, mask, labels_ = (np.full((n, limit), tok.pad_token_id, np.int64), np.zeros((n, limit), np.int64),
                                   np.full((n, limit), -100, np.int64))
            for i, pair in enumerate(rows):
                ids, lab = pair[k]
                ids_[i, :len(ids)], mask[i, :len(ids)], labels_[i, :len(lab)] = ids, 1, lab
            out.update({f"{part}_input_ids": ids_, f"{part}_attention_mask": mask, f"{part}_labels": labels_})
        return out


class PromptRows:
    """map_batches UDF for prompt rows (grpo): `prompt_ids` and `prompt_mask` left-padded to
    max_length - max_new_tokens (generation appends on the right), the prompt as the reward sees
    it (`prompt`: text, or the chat turns as JSON), the expected `answer` as text, and `row` (the
    row's number in its file, from a `ROW` column when there is one)."""

    ROW = "__row"

    def __init__(self, spec: JobSpec, tokenizer_source: str):
        self.spec, self.source = spec, tokenizer_source

    def __call__(self, batch: pa.Table) -> dict:
        import json

        from ftray.models.hf import load_tokenizer
        tok, spec, d = load_tokenizer(self.source), self.spec, self.spec.data
        prompts = batch.column(d.messages or d.prompt).to_pylist()
        n, width = len(prompts), spec.model.max_length - spec.method.max_new_tokens
        out = {"prompt_ids": np.full((n, width), tok.pad_token_id, np.int64),
               "prompt_mask": np.zeros((n, width), np.int64)}
        for i, prompt in enumerate(prompts):
            ids = generation_prompt(tok, spec, prompt)
            out["prompt_ids"][i, width - len(ids):], out["prompt_mask"][i, width - len(ids):] = ids, 1
        out["prompt"] = np.array([json.dumps(p) if d.messages else p for p in prompts], dtype=object)
        answers = batch.column(d.answer).to_pylist() if d.answer else [""] * n
        out["answer"] = np.array([str(a) for a in answers], dtype=object)
        out["row"] = (np.asarray(batch.column(self.ROW).to_pylist(), np.int64) if self.ROW in batch.column_names
                      else np.arange(n, dtype=np.int64))
        return out


class MultimodalRows:
    """map_batches UDF for `multimodal` models: `image` float32 (rows, C, H, W); text as hashed
    `words` (embedding bag) or padded `input_ids`/`attention_mask` (hf encoder); tabular `x`; `y`
    (not with `labelled=False`)."""

    def __init__(self, spec: JobSpec, class_index: dict, tokenizer_source: str | None, labelled: bool = True):
        self.spec, self.class_index, self.source, self.labelled = spec, class_index, tokenizer_source, labelled

    def __call__(self, batch: pa.Table) -> dict:
        d, model, out = self.spec.data, self.spec.model, {}
        if "image" in model.modalities:
            out["image"] = image_array(batch, d.image, "batch")
        if "text" in model.modalities:
            texts = batch.column(d.text).to_pylist()
            if model.text.kind == "bag":
                out["words"] = hashed_words(texts, model.text.buckets, model.text.max_length)
            else:
                from ftray.models.hf import load_tokenizer
                enc = load_tokenizer(self.source)(texts, truncation=True, max_length=model.text.max_length,
                                                  padding="max_length", return_tensors="np")
                out["input_ids"] = enc["input_ids"].astype(np.int64)
                out["attention_mask"] = enc["attention_mask"].astype(np.int64)
        if "tabular" in model.modalities:
            out["x"] = feature_matrix(batch, d.features, "batch")
        if self.labelled:
            out.update(labels(batch, d.label, d.task, self.class_index))
        return out


def labels(batch: pa.Table, column: str, task: str, class_index: dict) -> dict:
    values = batch.column(column).to_pylist()
    if task == "classification":
        return {"y": np.array([class_index[v] for v in values], dtype=np.int64)}
    return {"y": np.asarray(values, dtype=np.float32)}


def split_table(table: pa.Table, val_fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(train, validation) rows of `table`: a seeded random permutation, the same on every run."""
    train, val = split_rows(table.num_rows, val_fraction, seed)
    return table.take(train), table.take(val)


def split_rows(rows: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The row numbers `split_table` keeps for training and for validation, each in file order."""
    order = np.random.default_rng(seed).permutation(rows)
    n_val = max(1, round(rows * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _read(src: Source, columns: list[str], schema: pa.Schema):
    """`columns` of a source as a streaming Ray Dataset (read tasks spread over the cluster)."""
    import ray.data
    if src.format == "hf":
        return hf_datasets.read_arrow_files(src.dataset, columns)
    if src.format == "parquet":
        return ray.data.read_parquet(src.path, filesystem=src.fs).select_columns(columns)
    if src.format == "csv":
        return ray.data.read_csv(src.path, filesystem=src.fs).select_columns(columns)
    # Ray's JSON reader holds a whole file in one task's memory; byte ranges of JSONL_RANGE_BYTES
    # keep a task's memory bounded and read one large file in parallel.
    ranges = [{"file": f, "start": start, "end": min(start + JSONL_RANGE_BYTES, size)}
              for f, size in _files(src.fs, src.path) for start in range(0, size, JSONL_RANGE_BYTES)]
    return ray.data.from_items(ranges, override_num_blocks=max(1, len(ranges))).map_batches(
        JsonlRanges(src.fs, pa.schema([schema.field(c) for c in columns])), batch_size=1, batch_format="pyarrow")


JSONL_RANGE_BYTES = 64 << 20  # one Ray Data read task's share of a JSONL file


class JsonlRanges:
    """map_batches UDF: each (file, start, end) row -> the JSON lines that begin in that byte range,
    parsed with the schema `inspect` read (columns outside it are skipped)."""

    def __init__(self, fs: pafs.FileSystem, schema: pa.Schema):
        self.fs, self.schema = fs, schema

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for f, start, end in zip(*(batch.column(c).to_pylist() for c in ("file", "start", "end"))):
            text = read_lines(self.fs, f, start, end)
            if text.strip():
                yield pajson.read_json(
                    pa.BufferReader(text), read_options=pajson.ReadOptions(block_size=len(text) + 1),
                    parse_options=pajson.ParseOptions(explicit_schema=self.schema,
                                                      unexpected_field_behavior="ignore"))


def read_lines(fs: pafs.FileSystem, path: str, start: int, end: int) -> bytes:
    """The whole lines of a file that begin at a byte offset in [start, end): every line belongs
    to exactly one range of a split of the file."""
    with fs.open_input_file(path) as f:
        first = 0 if start == 0 else _line_end(f, start - 1)
        if first >= end:
            return b""
        last = _line_end(f, end - 1)
        f.seek(first)
        return f.read(last - first)


def _line_end(f, pos: int) -> int:
    """The offset just past the first newline at or after `pos` (the file's end if none)."""
    f.seek(pos)
    while chunk := f.read(1 << 16):
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(chunk)
    return pos


def row_transform(spec: JobSpec, plan: DataPlan):
    """The map_batches UDF that turns this job's rows into model inputs."""
    if spec.data.chosen:
        from ftray.models.hf import resolve_source
        return PairRows(spec, resolve_source(spec))
    if spec.method.prompts:
        from ftray.models.hf import resolve_source
        return PromptRows(spec, resolve_source(spec))
    if spec.model.name == "mlp":
        return TabularRows(spec, plan.class_index)
    if spec.model.name == "multimodal":
        from ftray.models.multimodal import text_source
        return MultimodalRows(spec, plan.class_index, text_source(spec))
    from ftray.models.hf import resolve_source
    return TokenizedRows(spec, plan.class_index, resolve_source(spec))


def split_tables(spec: JobSpec, plan: DataPlan) -> tuple[pa.Table, pa.Table]:
    """(training, validation) rows, exactly those the run uses (the two files, or the seeded split)."""
    if plan.streamed:
        raise SpecError(f"{plan.train.where}: the data streams ({plan.nbytes / 2**30:.2f} GiB on disk, over "
                        f"{MATERIALIZE_BYTES / 2**30:.2f} GiB); this needs its rows in the driver")
    if plan.val:
        return plan.tables[0][1], plan.tables[1][1]
    return split_table(plan.train_table, spec.data.val_fraction, spec.run.seed)


def validation_table(spec: JobSpec, plan: DataPlan) -> pa.Table:
    """The validation rows, exactly those the run validates on (the file, or the seeded split)."""
    return split_tables(spec, plan)[1]


TRANSFORM_HERE_BYTES = 64 << 20  # input tables up to this size are transformed in the driver
MATERIALIZE_BYTES = 1 << 30  # up to this size, by Ray Data tasks once, not every epoch


def ray_datasets(spec: JobSpec, plan: DataPlan) -> tuple[dict, dict]:
    """The `train` and `val` Ray Datasets, rows already turned into tensors, and their row counts."""
    import ray.data
    if plan.streamed:  # never in this process: counted by `inspect`, read by Ray Data tasks
        train_table = val_table = None
        rows = {"train": plan.row_counts[0], "val": plan.row_counts[1]}
    else:
        train_table, val_table = split_tables(spec, plan)
        rows = {"train": train_table.num_rows, "val": val_table.num_rows}
    udf = row_transform(spec, plan)
    precompute = spec.method.precomputes_teacher
    size = plan.nbytes
    if not plan.streamed and size <= TRANSFORM_HERE_BYTES and not precompute:
        # Small data (`inspect` already holds it in this process): transform it here, once, into
        # the object store. Each epoch then streams ready blocks, and no Ray Data task has to
        # start (and import the tokenizer) before the first step: seconds on any machine.
        datasets = {"train": _transformed_here(train_table, udf), "val": _transformed_here(val_table, udf)}
        return datasets, _model_rows(spec, datasets, rows)
    if plan.val:  # separate files: each is read by Ray Data tasks, in parallel across the cluster
        cols, (train_schema, val_schema) = needed_columns(spec), (t.schema for _, t in plan.tables)
        train, val = _read(plan.train, cols, train_schema), _read(plan.val, cols, val_schema)
    else:  # a seeded split of the table `inspect` already read (a Ray shuffle costs far more)
        train, val = from_arrow_here([train_table]), from_arrow_here([val_table])
    datasets = {name: ds.map_batches(udf, batch_format="pyarrow") for name, ds in
                (("train", train), ("val", val))}
    if precompute:
        datasets["train"] = datasets["train"].map_batches(
            TeacherLogits, fn_constructor_args=(spec.method.teacher,), batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=1))
    if not plan.streamed and size <= MATERIALIZE_BYTES:
        # Mid-sized data: transformed by parallel Ray Data tasks (tokenizing this much in one
        # process would take minutes), once, so each epoch streams ready blocks instead of
        # re-running the read and transform tasks.
        datasets = {name: ds.materialize() for name, ds in datasets.items()}
        rows = _model_rows(spec, datasets, rows)
    return datasets, rows


def _model_rows(spec: JobSpec, datasets: dict, rows: dict) -> dict:
    """The row counts the workers will see: with `data.packing`, the packed rows (fewer than the
    examples; they size an epoch and so the LR schedule), counted from the materialized datasets'
    metadata. Streamed data keeps its example count: counting would run the pipeline once more."""
    if not spec.data.packing:
        return rows
    return {name: datasets[name].count() for name in rows}


def _transformed_here(table: pa.Table, udf, block_rows: int = 1024):
    """`udf` applied in this process to `table`, block by block (as `map_batches` would batch it),
    as a materialized Ray Dataset."""
    from ray.data.block import BlockAccessor
    blocks = [BlockAccessor.batch_to_block(udf(table.slice(i, block_rows)))
              for i in range(0, table.num_rows, block_rows)]
    return from_arrow_here(blocks)


def from_arrow_here(tables: list[pa.Table]):
    """`ray.data.from_arrow(tables)`, with each block's metadata computed in this process. Ray's
    own asks a Ray task per block for it, and on a fresh Ray that task first waits for a worker
    process to start and import Ray Data (seconds, before the first training step). Built from the
    same Ray Data 2.60 internals `from_arrow_refs` uses."""
    import ray
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators.from_operators import FromArrow
    from ray.data._internal.stats import DatasetStats
    from ray.data._internal.util import get_table_block_metadata_schema
    from ray.data.context import DataContext
    from ray.data.dataset import MaterializedDataset
    metadata = [get_table_block_metadata_schema(t) for t in tables]
    context = DataContext.get_current().copy()
    plan = LogicalPlan(FromArrow([ray.put(t) for t in tables], metadata), context)
    return MaterializedDataset(plan, context, DatasetStats(metadata={"FromArrow": metadata}, parent=None))


class TeacherLogits:
    """map_batches actor: adds the (frozen) teacher's outputs to each row as `teacher_logits`."""

    def __init__(self, teacher: str):
        from ftray.models import load_exported
        self.teacher = load_exported(teacher).eval()

    def __call__(self, batch: dict) -> dict:
        import torch
        with torch.no_grad():
            tensors = {k: torch.as_tensor(v) for k, v in batch.items()}
            batch["teacher_logits"] = self.teacher(tensors).float().numpy()
        return batch
