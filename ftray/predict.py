"""Use a finished model: `ftray.load(RUN)` (a predictor in Python), `ftray predict` (Ray Data batch
inference with an actor pool) and `ftray eval` (the task's metrics on a labelled file).

RUN is a run folder, its `model/` export, a LoRA run's `model/adapter/`, or a sweep folder with an
ensemble (or its `ensemble/`). The predictor applies the run's own preprocessing: the row
transforms of `ftray.data` that training uses, with the run's spec (from `summary.json`) and the
export's facts (classes, tokenizer). One `Predictor` turns rows into predictions; the Ray Data actor
(`PredictBatches`) and the Serve deployment (`ftray.serve`) wrap that same object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from ftray import data
from ftray.schema import SpecError
from ftray.spec import JobSpec

SUMMARY = "summary.json"
EVAL_FILE = "eval.json"
CONFUSION_PNG = "eval_confusion.png"
ID_COLUMN, PREDICTION, PROBABILITIES = "id", "prediction", "probabilities"
OUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
_ARROW_FORMAT = {"parquet": "parquet", "jsonl": "json", "csv": "csv"}  # as `ftray.data` reads them


# ====================================================================== which run, which model
@dataclass
class RunRef:
    """A finished run as the predictor needs it: its folder, its resolved spec, the export to load."""
    folder: Path  # holds summary.json (and, after `ftray eval`, eval.json)
    spec: JobSpec
    model_dir: Path  # an export folder (ftray_model.json), or a LoRA adapter's base run's export
    adapter: Path | None = None  # a LoRA adapter folder to load over the spec's base model


def locate(run: str, key: str = "RUN") -> RunRef:
    """The run behind `run` (a run/sweep folder, an export, an adapter); SpecError naming `key`."""
    from ftray.models import exported_model_dir
    p = Path(run).expanduser()
    if not p.is_dir():
        raise SpecError(f"{key}: {run!r}: no such folder (a run folder, its model/ or a sweep folder)")
    p = p.resolve()
    folder = next((c for c in (p, p.parent, p.parent.parent) if (c / SUMMARY).is_file()), None)
    if folder is None:
        raise SpecError(f"{key}: {run!r}: not an ftray run (no {SUMMARY} in it or above it)")
    summary = _read_summary(folder / SUMMARY, key)
    spec = JobSpec.model_validate(summary["spec"])
    if (p / "adapter_config.json").is_file():
        return RunRef(folder, spec, p, adapter=p)
    if p == folder and "ensemble" in summary:
        return RunRef(folder, spec, exported_model_dir(str(folder / "ensemble"), key))
    if p == folder and spec.tune is not None:
        raise SpecError(f"{key}: {run!r} is a sweep without an ensemble; pass its best trial's folder "
                        f"({(summary.get('best') or {}).get('run')})")
    return RunRef(folder, spec, exported_model_dir(str(p), key))


def _read_summary(path: Path, key: str) -> dict:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SpecError(f"{key}: {path}: not a readable JSON file ({e})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("spec"), dict):
        raise SpecError(f"{key}: {path}: no resolved spec in it (not an ftray run summary)")
    return summary


# ============================================================================= the predictor
@dataclass
class Generation:
    """How a causal LM generates: greedy when `temperature` is 0, else sampled (seeded)."""
    max_new_tokens: int = 32
    temperature: float = 0.0
    stop: list[str] = field(default_factory=list)  # the text ends before the first of these
    seed: int = 0


class Predictor:
    """A finished model with its run's preprocessing: rows in, predictions out.

    `predict(rows)` takes a list of dicts, a pandas DataFrame or a pyarrow Table and returns one
    prediction per row, in order: the class (its label value) for classifiers, the value for
    regression, the generated text for causal LMs. `predict_columns` also gives `probabilities`
    (classifiers: one list per row, in `classes` order)."""

    def __init__(self, ref: RunRef, model, device: str = "cpu", generation: Generation | None = None,
                 batch_size: int = 256):
        self.ref, self.spec, self.info = ref, ref.spec, model.info
        self.model = model.to(device).eval()
        self.device, self.generation, self.batch_size = device, generation or Generation(), batch_size
        self.source = _tokenizer_source(ref)
        self.class_index = {c: i for i, c in enumerate(self.info.classes)}

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def classes(self) -> list:
        return list(self.info.classes)

    @property
    def columns(self) -> list[str]:
        """The input columns a row must have to be predicted."""
        return model_columns(self.spec)

    @property
    def label_columns(self) -> list[str]:
        """The columns `ftray eval` reads: the inputs with the label (or the LM's text columns)."""
        return data.needed_columns(self.spec)

    def predict(self, rows) -> list:
        return self.predict_columns(rows)[PREDICTION].tolist()

    def predict_columns(self, rows) -> dict[str, np.ndarray]:
        """`prediction` (and `probabilities` for classifiers) for every row, as numpy arrays."""
        table = as_table(rows)
        check_columns(table.column_names, self.columns, "rows")
        parts = [self._predict_batch(table.slice(i, self.batch_size))
                 for i in range(0, max(table.num_rows, 1), self.batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def model_outputs(self, table: pa.Table, labelled: bool = False) -> tuple[object, dict]:
        """The model's raw outputs on `table`'s rows and the batch they came from (`labelled`:
        with the targets `y` or LM `labels`, as training's validation sees them)."""
        import torch
        arrays = self._transform(labelled)(table)
        width = self.info.in_features
        if "x" in arrays and width and arrays["x"].shape[1] != width:
            # a wrong row width would otherwise surface as a matmul error deep in the model
            raise SpecError(f"rows: features {', '.join(self.spec.data.features)} give {arrays['x'].shape[1]} "
                            f"values per row, the model reads {width}")
        batch = {k: torch.as_tensor(v, device=self.device) for k, v in arrays.items()}
        with torch.no_grad():
            return self.model(batch), batch

    def _predict_batch(self, table: pa.Table) -> dict[str, np.ndarray]:
        if self.task == "causal_lm":
            return {PREDICTION: np.array(self._generate(table), dtype=object)}
        out, _ = self.model_outputs(table)
        if self.task == "regression":
            return {PREDICTION: out.float().cpu().numpy()}
        probs = out.float().softmax(-1).cpu().numpy()
        # argmax of the raw outputs, as training's validation accuracy counts (softmax can tie them)
        return {PREDICTION: np.asarray(self.classes)[out.argmax(-1).cpu().numpy()], PROBABILITIES: probs}

    def _transform(self, labelled: bool):
        """The training row transform of this run's model (`ftray.data.row_transform`'s choice)."""
        name = self.spec.model.name
        if name == "mlp":
            return data.TabularRows(self.spec, self.class_index, labelled)
        if name == "multimodal":
            return data.MultimodalRows(self.spec, self.class_index, self.source, labelled)
        return data.TokenizedRows(self.spec, self.class_index, self.source, labelled)

    def generate(self, prompts: list[str], generation: Generation | None = None) -> list[str]:
        """Causal LMs: the text generated after each prompt (`generation`, default the predictor's)."""
        if self.task != "causal_lm":
            raise SpecError(f"generate: the model is a {self.task} model, not a causal LM")
        table = pa.table({_prompt_column(self.spec): pa.array(prompts, pa.string())})
        return [t for i in range(0, len(prompts), self.batch_size)
                for t in self._generate(table.slice(i, self.batch_size), generation)]

    def _generate(self, table: pa.Table, generation: Generation | None = None) -> list[str]:
        """Generated text after each row's prompt (left-padded into one batch for `generate`)."""
        import torch

        from ftray.models.hf import load_tokenizer
        tok, g = load_tokenizer(self.source), generation or self.generation
        if table.num_rows == 0:
            return []
        room = max(1, self.spec.model.max_length)
        prompts = [data.prompt_ids(tok, p)[-room:] for p in table.column(_prompt_column(self.spec)).to_pylist()]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
        end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        sample = {"do_sample": True, "temperature": g.temperature} if g.temperature > 0 else {"do_sample": False}
        torch.manual_seed(g.seed)
        with torch.no_grad():
            out = self.model.hf.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                         max_new_tokens=g.max_new_tokens, pad_token_id=tok.pad_token_id,
                                         eos_token_id=end, **sample)
        return [cut_at_stop(t, g.stop) for t in tok.batch_decode(out[:, width:], skip_special_tokens=True)]


def cut_at_stop(text: str, stop: list[str]) -> str:
    """`text` up to (not including) the first stop string in it."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[:min(cuts)] if cuts else text


def model_columns(spec: JobSpec) -> list[str]:
    """The input columns a run's model reads (not the label): a causal LM's prompt column."""
    if spec.data.task == "causal_lm":
        return [_prompt_column(spec)]
    return [c for c in data.needed_columns(spec) if c != spec.data.label]


def _prompt_column(spec: JobSpec) -> str:
    """A causal LM's prompt: the `data.prompt` column, else the `data.text` column to continue."""
    return spec.data.prompt or spec.data.text


def _tokenizer_source(ref: RunRef) -> str | None:
    """Where the run's tokenizer is saved: the hf export, a multimodal export's text encoder, an
    ensemble's first member (members share the sweep's data), or an adapter's base."""
    from ftray.models.hf import resolve_source
    if ref.adapter is not None:
        return resolve_source(ref.spec)
    for cand in (ref.model_dir, ref.model_dir / "text_encoder", ref.model_dir / "members" / "0"):
        if (cand / "tokenizer_config.json").is_file():
            return str(cand)
    return None


def load(run: str, device: str = "cpu", generation: Generation | None = None, batch_size: int = 256) -> Predictor:
    """The predictor of a finished run (see `Predictor`); SpecError if `run` holds none."""
    ref = locate(run)
    return Predictor(ref, _load_model(ref), device, generation, batch_size)


def _load_model(ref: RunRef):
    from ftray.models import load_exported
    if ref.adapter is None:
        return load_exported(str(ref.model_dir))
    return _with_adapter(ref)


def _with_adapter(ref: RunRef):
    """The run's base model (as its spec builds it) with the LoRA adapter folder loaded over it."""
    from peft import PeftModel

    from ftray.models import build_model, export_config
    from ftray.models.base import ModelInfo
    if ref.spec.model.config:
        raise SpecError(f"RUN: {ref.adapter}: its base is built from model.config (random weights, not "
                        "saved): load the run's merged model/ instead")
    info = ModelInfo(**export_config(ref.adapter.parent, "RUN")["info"])
    model = build_model(ref.spec, info)
    model.hf = PeftModel.from_pretrained(model.hf, str(ref.adapter))
    return model


def as_table(rows) -> pa.Table:
    """A list of dicts, a pandas DataFrame or a pyarrow Table as a pyarrow Table."""
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, list):
        return pa.Table.from_pylist(rows)
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
        return pa.Table.from_pandas(rows, preserve_index=False)
    raise TypeError(f"rows must be a list of dicts, a pandas DataFrame or a pyarrow Table, not {type(rows).__name__}")


def check_columns(have: list[str], need: list[str], where: str) -> None:
    """SpecError naming `where` and the first column of `need` that `have` lacks."""
    missing = [c for c in need if c not in have]
    if missing:
        raise SpecError(f"{where}: no column {missing[0]!r} (the model reads {', '.join(need)}; "
                        f"columns: {', '.join(have)})")


# ============================================================ `ftray predict`: Ray Data batch inference
class PredictBatches:
    """map_batches actor: loads the run's predictor once, then appends `prediction` (and
    `probabilities`) to each batch, every input column kept."""

    def __init__(self, run: str, device: str, generation: Generation, batch_size: int, threads: int = 1):
        import torch
        # The actor's torch threads are its CPUs (`--cpus-per-actor`), not the run's training
        # OMP_NUM_THREADS (the runtime env's) nor the machine's core count.
        torch.set_num_threads(threads)
        self.predictor = load(run, device, generation, batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        for name, values in self.predictor.predict_columns(batch).items():
            batch = batch.append_column(name, _arrow(values))
        return batch


def _arrow(values: np.ndarray) -> pa.Array:
    if values.ndim == 2:  # probabilities: a fixed-size list per row
        return pa.FixedSizeListArray.from_arrays(pa.array(values.astype(np.float32).ravel()), values.shape[1])
    return pa.array(values.tolist() if values.dtype == object else values)


@dataclass
class PredictJob:
    """`ftray predict`'s checked arguments."""
    run: str
    ref: RunRef
    source: data.Source
    out: Path
    out_format: str
    batch_size: int
    concurrency: int
    cpus_per_actor: int
    gpu: bool
    generation: Generation


def check_predict(args) -> PredictJob:
    """Everything `ftray predict` can check before Ray starts (SpecError: exit 2)."""
    ref = locate(args.run)
    out = Path(args.out).expanduser()
    fmt = OUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise SpecError(f"--out: {args.out!r}: unsupported extension (one of {', '.join(sorted(OUT_FORMATS))})")
    if not out.parent.is_dir():
        raise SpecError(f"--out: {args.out!r}: no such folder {str(out.parent)!r}")
    for name, value in (("--batch-size", args.batch_size), ("--concurrency", args.concurrency),
                        ("--cpus-per-actor", args.cpus_per_actor), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise SpecError(f"{name}: must be at least 1, got {value}")
    if args.gpu:
        import torch

        from ftray.ray_context import cluster_address
        if torch.cuda.device_count() < 1 and not cluster_address(args.address):
            raise SpecError("--gpu: this machine has no GPU; leave --gpu out or pass --address of a cluster")
    src = data.resolve(args.data, "auto", "--data")
    have = input_columns(src)
    check_columns(have, model_columns(ref.spec), f"--data: {src.uri}")
    taken = [c for c in (ID_COLUMN, PREDICTION, PROBABILITIES) if c in have]
    if taken:
        raise SpecError(f"--data: {src.uri}: has a column {taken[0]!r}, which the output adds")
    generation = Generation(args.max_new_tokens, args.temperature, list(args.stop), args.seed)
    return PredictJob(args.run, ref, src, out, fmt, args.batch_size, args.concurrency, args.cpus_per_actor,
                      args.gpu, generation)


def input_schema(src: data.Source) -> pa.Schema:
    """The schema of a data source (Parquet footers; JSON/CSV first block)."""
    try:
        return pads.dataset(src.path, filesystem=src.fs, format=_ARROW_FORMAT[src.format]).schema
    except (pa.ArrowException, OSError, ValueError) as e:
        raise SpecError(f"{src.key}: {src.uri}: cannot read as {src.format}: {e}".splitlines()[0]) from None


def input_columns(src: data.Source) -> list[str]:
    """The column names of a data source, from its schema."""
    return input_schema(src).names


def run_predict(job: PredictJob, address: str | None) -> int:
    """Stream the input through the actor pool and write every row, in order, with its id."""
    from ftray.ray_context import use_ray
    with use_ray(job.ref.spec, address, cpus=job.concurrency * job.cpus_per_actor + 1):
        rows = write_stream(with_ids(predicted(job).iter_batches(batch_size=None, batch_format="pyarrow")),
                            job.out, job.out_format)
    print(f"[ftray] predict: {rows} rows -> {job.out}", file=sys.stderr, flush=True)
    return 0


def predicted(job: PredictJob):
    """The input as a Ray Dataset of one-batch blocks, each with its predictions (in input order)."""
    import ray.data
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # output rows in input order: ids are row numbers
    schema = input_schema(job.source)  # every input column travels to the output
    # Ray Data reads a Parquet file as one block (up to its 128 MiB block size) and hands an actor
    # whole blocks: without this, one actor predicts a whole file while the others wait. Blocks of
    # one batch each spread the file over the pool, and each model call gets its block as it is.
    blocks = data._read(job.source, schema.names, schema).repartition(target_num_rows_per_block=job.batch_size)
    return blocks.map_batches(
        PredictBatches, fn_constructor_args=(job.run, "cuda" if job.gpu else "cpu", job.generation,
                                             job.batch_size, job.cpus_per_actor),
        batch_size=job.batch_size, batch_format="pyarrow", concurrency=job.concurrency,
        num_cpus=job.cpus_per_actor, num_gpus=1 if job.gpu else 0)


def with_ids(batches: Iterator[pa.Table], every_s: float = 10.0) -> Iterator[pa.Table]:
    """Each batch with the `id` column first (row numbers, counted here in stream order), and a
    progress line on stderr every `every_s` seconds."""
    done, started, last = 0, time.perf_counter(), time.perf_counter()
    for batch in batches:
        yield batch.add_column(0, ID_COLUMN, pa.array(np.arange(done, done + batch.num_rows, dtype=np.int64)))
        done += batch.num_rows
        if time.perf_counter() - last >= every_s:
            last = time.perf_counter()
            print(f"[ftray] predict: {done} rows done ({done / (last - started):.0f} rows/s)",
                  file=sys.stderr, flush=True)


def write_stream(batches: Iterator[pa.Table], out: Path, fmt: str) -> int:
    """Write batches into one file as they come (Parquet row groups, CSV or JSON lines); returns rows.
    The file appears under its name only when complete (written to `.NAME.part`, then renamed)."""
    part, rows, writer = out.with_name(f".{out.name}.part"), 0, None
    try:
        for batch in batches:
            writer = writer or _writer(part, fmt, batch.schema)
            writer.write(batch)
            rows += batch.num_rows
        writer = writer or _writer(part, fmt, pa.schema([(ID_COLUMN, pa.int64())]))
    finally:
        if writer:
            writer.close()
    part.replace(out)
    return rows


class _writer:
    """One output file of `fmt`, written batch by batch."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema):
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
        self.fmt, self.schema = fmt, schema
        if fmt == "parquet":
            self.w = pq.ParquetWriter(str(path), schema)
        elif fmt == "csv":
            self.w = pacsv.CSVWriter(str(path), _csv_schema(schema))
        else:
            self.w = open(path, "w", encoding="utf-8")

    def write(self, batch: pa.Table) -> None:
        batch = batch.cast(self.schema)
        if self.fmt == "parquet":
            self.w.write_table(batch)
        elif self.fmt == "csv":
            self.w.write_table(_csv_safe(batch))
        else:
            self.w.write("".join(json.dumps(r) + "\n" for r in batch.to_pylist()))

    def close(self) -> None:
        self.w.close()


def _is_nested(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_struct(t)


def _csv_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([(f.name, pa.string() if _is_nested(f.type) else f.type) for f in schema])


def _csv_safe(batch: pa.Table) -> pa.Table:
    """CSV has no lists: nested columns (pixels, probabilities) are written as JSON text."""
    for i, f in enumerate(batch.schema):
        if _is_nested(f.type):
            batch = batch.set_column(i, f.name, pa.array([json.dumps(v) for v in batch.column(i).to_pylist()]))
    return batch


# ============================================================================== `ftray eval`
def evaluate(run: str, data_path: str, batch_size: int = 256) -> dict:
    """The task's metrics of `run` on a labelled file, computed here in-process (the file is read
    whole with pyarrow, as `inspect` reads training data); written to the run's `eval.json`."""
    predictor = load(run, batch_size=batch_size)
    src = data.resolve(data_path, "auto", "--data")
    table = data.read_table(src, predictor.label_columns)
    where = f"--data: {src.uri}"
    if table.num_rows == 0:
        raise SpecError(f"{where}: no rows")
    if predictor.task == "classification":
        _check_labels(table.column(predictor.spec.data.label).to_pylist(), predictor.class_index, where)
    metrics, extra = METRICS[predictor.task](predictor, table)
    result = {"run": str(predictor.ref.folder), "data": src.uri, "rows": table.num_rows,
              "task": predictor.task, "metrics": metrics, **extra}
    (predictor.ref.folder / EVAL_FILE).write_text(json.dumps(result, indent=2))
    return result


def _check_labels(values: list, class_index: dict, where: str) -> None:
    bad = next((i for i, v in enumerate(values) if v not in class_index), None)
    if bad is not None:
        raise SpecError(f"{where}: row {bad}: label {values[bad]!r} is not one of the model's classes "
                        f"{list(class_index)[:20]}")


def _batches(predictor: Predictor, table: pa.Table) -> Iterator[tuple[object, dict]]:
    for i in range(0, table.num_rows, predictor.batch_size):
        yield predictor.model_outputs(table.slice(i, predictor.batch_size), labelled=True)


def _classification_metrics(predictor: Predictor, table: pa.Table) -> tuple[dict, dict]:
    from sklearn.metrics import confusion_matrix, f1_score
    pred, true = [], []
    for out, batch in _batches(predictor, table):
        pred.append(out.argmax(-1).cpu().numpy())
        true.append(batch["y"].cpu().numpy())
    pred, true = np.concatenate(pred), np.concatenate(true)
    labels = list(range(len(predictor.classes)))
    matrix = confusion_matrix(true, pred, labels=labels)
    png = predictor.ref.folder / CONFUSION_PNG
    png.write_bytes(confusion_png(matrix, predictor.classes))
    metrics = {"accuracy": float((pred == true).mean()),
               "macro_f1": float(f1_score(true, pred, labels=labels, average="macro", zero_division=0))}
    return metrics, {"confusion_matrix": matrix.tolist(), "classes": predictor.classes, "confusion_png": str(png)}


def _regression_metrics(predictor: Predictor, table: pa.Table) -> tuple[dict, dict]:
    err = np.concatenate([(out.float() - batch["y"]).cpu().numpy() for out, batch in _batches(predictor, table)])
    return {"mse": float((err ** 2).mean()), "mae": float(np.abs(err).mean())}, {}


def _lm_metrics(predictor: Predictor, table: pa.Table) -> tuple[dict, dict]:
    """Mean next-token loss over the label tokens, as training's validation computes it."""
    import math

    from ftray.methods.base import task_loss
    loss_sum, count = 0.0, 0.0
    for out, batch in _batches(predictor, table):
        loss_sum += float(task_loss("causal_lm", out, batch, reduction="sum"))
        count += float((batch["labels"][:, 1:out.shape[1]] != -100).sum())
    loss = loss_sum / max(1.0, count)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}, {"tokens": int(count)}


METRICS = {"classification": _classification_metrics, "regression": _regression_metrics,
           "causal_lm": _lm_metrics}


def confusion_png(matrix: np.ndarray, classes: list) -> bytes:
    """The confusion matrix (rows: true class, columns: predicted) as PNG bytes."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    size = 2 + 0.5 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=90 if len(classes) > 12 else 0)
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if len(classes) <= 20:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def eval_table(results: list[dict]) -> str:
    """One row per evaluated run: its folder, the rows read and each metric."""
    names = sorted({k for r in results for k in r["metrics"]})
    header = ["run", "rows", *names]
    rows = [[r["run"], str(r["rows"]), *(f"{r['metrics'][n]:.6g}" if n in r["metrics"] else "-" for n in names)]
            for r in results]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows])


# ================================================================================= the CLI
def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `ftray predict` and `ftray eval` on the top-level subparsers."""
    p = sub.add_parser("predict", help="batch inference with a finished run's model (Ray Data)")
    p.add_argument("run", metavar="RUN", help="a run folder, its model/ (or model/adapter/), or a sweep with an ensemble")
    p.add_argument("--data", required=True, help="rows to predict: Parquet, JSONL or CSV (file or folder)")
    p.add_argument("--out", required=True, help="one output file: .parquet, .jsonl or .csv")
    p.add_argument("--batch-size", type=int, default=512, help="rows per model call (default 512)")
    p.add_argument("--concurrency", type=int, default=1, help="model actors (default 1)")
    p.add_argument("--cpus-per-actor", type=int, default=1,
                   help="CPUs (and torch threads) of each model actor (default 1)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="causal LMs: tokens to generate (default 32)")
    p.add_argument("--temperature", type=float, default=0.0, help="causal LMs: 0 greedy (default), else sampled")
    p.add_argument("--stop", action="append", default=[], help="causal LMs: stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="causal LMs: seed of sampling (default 0)")
    e = sub.add_parser("eval", help="a finished run's metrics on a labelled file (eval.json)")
    e.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or their model/, or sweeps with an ensemble)")
    e.add_argument("--data", required=True, help="labelled rows: Parquet, JSONL or CSV")
    e.add_argument("--batch-size", type=int, default=256, help="rows per model call (default 256)")


def cmd_predict(args) -> int:
    job = check_predict(args)
    status = run_predict(job, args.address)
    print(job.out, flush=True)
    return status


def cmd_eval(args) -> int:
    for run in args.runs:  # every RUN checked before any model loads
        locate(run)
    results = [evaluate(run, args.data, args.batch_size) for run in args.runs]
    print(eval_table(results), flush=True)
    return 0
