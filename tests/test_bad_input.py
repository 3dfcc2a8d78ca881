"""The bad-input corpus: every way a spec, a data file or an exported model can be wrong.

Each case runs the real command line in-process (`ftray run` and `ftray validate`) and must end
with exit status 2 and one message on stderr that starts with "ftray: error: ", names the problem
and where it is (the file, and the key path or the row), and carries no traceback. Ray must not
start: `ftray.ray_context.use_ray` is replaced by a function that fails the test.

The cases live in one table, `CASES`. A case is a function that writes what it needs under its
own folder and returns the arguments after the command (the spec path, then any `--set`s), and
the fragments the message must contain.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ftray import cli
from ftray.models.base import ModelInfo
from ftray.models.mlp import MLP, WEIGHTS
from ftray.spec import MLPModel, SpecError, load_spec
from tests.conftest import blobs, mlp_spec, texts, write_jsonl, write_spec


# ------------------------------------------------------------------------------ the shared world
@dataclass
class World:
    """Good inputs the cases start from (built once per module, never modified by a case)."""
    root: Path
    blobs: Path          # 240 rows: `x` (8 floats), integer `label` in 0..2
    export: Path         # a run folder whose model/ is an mlp matching `mlp_spec`'s defaults
    bert: Path           # a tiny BERT (random weights, MiniLM's tokenizer)
    texts: Path          # JSONL: `text`, integer `label` in 0..1


def export_mlp(run_dir: Path, units: int = 16, classes: int = 3, task: str = "classification") -> Path:
    """Export an untrained mlp the way a finished run does (`<run>/model/`); returns the run folder."""
    info = ModelInfo(task=task, in_features=8, classes=list(range(classes)) if task == "classification" else [])
    MLP(MLPModel(layers=1, units=units), info).export(run_dir / "model")
    return run_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_bert) -> World:
    root = tmp_path_factory.mktemp("bad_input_world")
    pq.write_table(blobs(240), root / "blobs.parquet")
    return World(root=root, blobs=root / "blobs.parquet", export=export_mlp(root / "pretrained"),
                 bert=tiny_bert, texts=write_jsonl(root / "texts.jsonl", texts(20)))


# --------------------------------------------------------------------------- helpers for the cases
def good(w: World, d: Path, **sections) -> dict:
    """A valid mlp spec over the world's blobs, with `sections` merged in (one level deep)."""
    return mlp_spec(w.blobs, d / "runs", "bad", **sections)


def spec(d: Path, raw: dict, *overrides: str) -> list[str]:
    """Write `raw` as the case's spec; the CLI arguments for it (plus `--set`s)."""
    path = write_spec(d / "job.yaml", raw)
    return [str(path), *(a for o in overrides for a in ("--set", o))]


def text(d: Path, body: str | bytes, name: str = "job.yaml") -> list[str]:
    """A spec file with exactly these contents."""
    path = d / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return [str(path)]


def yaml_of(w: World, d: Path, **sections) -> str:
    return yaml.safe_dump(good(w, d, **sections), sort_keys=False)


def with_data(w: World, d: Path, path: Path, **data_fields) -> list[str]:
    return spec(d, good(w, d, data={"path": str(path), **data_fields}))


def parquet(d: Path, table: pa.Table, name: str = "bad.parquet") -> Path:
    pq.write_table(table, d / name)
    return d / name


def file_with(d: Path, body: str | bytes, name: str = "bad.csv") -> Path:
    path = d / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


def copied_export(w: World, d: Path) -> Path:
    """A private copy of the world's exported mlp (run folder) that a case may damage."""
    return Path(shutil.copytree(w.export, d / "pretrained"))


def damaged_export(w: World, d: Path, file: str, payload: bytes | None) -> Path:
    """A copy of the export with `model/<file>` replaced by `payload` (or deleted when None)."""
    run = copied_export(w, d)
    target = run / "model" / file
    if payload is None:
        target.unlink()
    else:
        target.write_bytes(payload)
    return run


def truncated(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def init_from(w: World, d: Path, run: Path, **sections) -> list[str]:
    raw = good(w, d, **sections)
    raw["model"]["init_from"] = str(run)
    return spec(d, raw)


def teacher(w: World, d: Path, run: Path) -> list[str]:
    return spec(d, good(w, d, method={"name": "distill", "teacher": str(run)}))


def hf(w: World, d: Path, model: dict | None = None, method: dict | None = None, **data_fields) -> list[str]:
    raw = {"model": {"name": "hf", "path": str(w.bert), "max_length": 16, **(model or {})},
           "data": {"path": str(w.texts), "text": "text", "label": "label", **data_fields},
           "train": {"epochs": 1, "batch_size": 4},
           "run": {"name": "bad", "storage_path": str(d / "runs")}}
    if method:
        raw["method"] = method
    return spec(d, raw)


GOOD_CHAT = [{"role": "system", "content": "be brief."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello."}]
TINY_LLAMA = {"model_type": "llama", "vocab_size": 30522, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64}


def chat(w: World, d: Path, *rows, model: dict | None = None, **data_fields) -> list[str]:
    """A chat-tuning spec over a JSONL file of three good chats and then `rows` (one `messages`
    value each): the first bad row is row 3. `data_fields` go into the data section."""
    path = d / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in [GOOD_CHAT] * 3 + list(rows)))
    raw = {"model": {"name": "hf", "path": str(w.bert), "max_length": 64, "config": TINY_LLAMA, **(model or {})},
           "data": {"path": str(path), "task": "causal_lm", "messages": "messages", "chat_template": "chatml",
                    "label": None, "val_fraction": 0.25, **data_fields},
           "train": {"epochs": 1, "batch_size": 4},
           "run": {"name": "bad", "storage_path": str(d / "runs")}}
    return spec(d, raw)


GOOD_PAIR = {"prompt": "what color is grass?", "chosen": "grass is green.", "rejected": "green"}


def pairs(w: World, d: Path, *rows, **data_fields) -> list[str]:
    """A dpo spec over a JSONL file of three good preference pairs and then `rows`: the first bad
    row is row 3. `data_fields` go into the data section."""
    path = d / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [GOOD_PAIR] * 3 + list(rows)))
    raw = {"model": {"name": "hf", "path": str(w.bert), "max_length": 32, "config": TINY_LLAMA},
           "data": {"path": str(path), "task": "causal_lm", "prompt": "prompt", "chosen": "chosen",
                    "rejected": "rejected", "label": None, "val_fraction": 0.25, **data_fields},
           "method": {"name": "dpo"},
           "train": {"epochs": 1, "batch_size": 4},
           "run": {"name": "bad", "storage_path": str(d / "runs")}}
    return spec(d, raw)


def csv_data(w: World, d: Path, body: str) -> list[str]:
    """A CSV training file with one scalar feature column `f0`."""
    return with_data(w, d, file_with(d, body), features=["f0"])


def bad_config(w: World, d: Path, payload: bytes) -> list[str]:
    """model.init_from an export whose ftray_model.json holds `payload`."""
    return init_from(w, d, damaged_export(w, d, "ftray_model.json", payload))


def bad_weights(w: World, d: Path, payload: bytes | None) -> list[str]:
    """model.init_from an export whose model.safetensors holds `payload` (None: deleted)."""
    return init_from(w, d, damaged_export(w, d, "model.safetensors", payload))


def truncated_parquet(w: World, d: Path) -> list[str]:
    return with_data(w, d, file_with(d, truncated(w.blobs), "cut.parquet"))


def empty_folder(w: World, d: Path) -> list[str]:
    (d / "empty_dir").mkdir()
    return with_data(w, d, d / "empty_dir")


def pickle_only_export(w: World, d: Path) -> list[str]:
    """An export whose weights are a pickle (`pytorch_model.bin`) instead of safetensors."""
    run = copied_export(w, d)
    (run / "model" / "model.safetensors").rename(run / "model" / "pytorch_model.bin")
    return init_from(w, d, run)


def hf_copy(w: World, d: Path) -> Path:
    return Path(shutil.copytree(w.bert, d / "m"))


def hf_corrupt_config(w: World, d: Path) -> list[str]:
    model = hf_copy(w, d)
    (model / "config.json").write_text("{not json")
    return hf(w, d, model={"path": str(model)})


def hf_truncated_export(w: World, d: Path) -> list[str]:
    """An hf export (config + tokenizer + ftray_model.json) whose weights file was cut off."""
    model = hf_copy(w, d)
    (model / "ftray_model.json").write_text(json.dumps({"builder": "hf", "info": {"task": "classification",
                                                                                "classes": [0, 1]}}))
    (model / "model.safetensors").write_bytes(truncated(w.bert / "model.safetensors"))
    return hf(w, d, model={"path": None, "init_from": str(model)})


def saved_dataset(w: World, d: Path, **data_fields) -> list[str]:
    """The world's blobs as a Hugging Face DatasetDict (`train`, `test`) saved to disk."""
    import datasets
    datasets.disable_progress_bars()  # the case's own stderr must hold only ftray's message
    table = pq.read_table(w.blobs)
    datasets.DatasetDict({"train": datasets.Dataset(datasets.table.InMemoryTable(table)),
                          "test": datasets.Dataset(datasets.table.InMemoryTable(table.slice(0, 20)))}
                         ).save_to_disk(str(d / "dict"))
    return with_data(w, d, d / "dict", **data_fields)


def nested(depth: int) -> str:
    return "model: " + "[" * depth + "]" * depth + "\n"


# ---------------------------------------------------------------------------------- the corpus
# Random-weight model shapes (`model.config`) that NF4 cannot store.
GPT2_CONFIG = {"model_type": "gpt2", "vocab_size": 30522, "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64}
ODD_BERT_CONFIG = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 36, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}


@dataclass(frozen=True)
class Case:
    make: Callable[[World, Path], list[str]]
    expect: tuple[str, ...]  # fragments of the message (besides "ftray: error: ")


C = Case
CASES: dict[str, Case] = {
    # -- the spec file itself
    "missing spec file": C(lambda w, d: [str(d / "nope.yaml")], ("nope.yaml: no such spec file",)),
    "folder as spec": C(lambda w, d: [str(d)], ("is a folder, not a spec file",)),
    "empty spec file": C(lambda w, d: text(d, ""), ("job.yaml: the top level must be a mapping", "not empty")),
    "comments only": C(lambda w, d: text(d, "# nothing here\n"), ("not empty",)),
    "non-UTF-8 spec": C(lambda w, d: text(d, b"run: {name: caf\xe9}\n"), ("job.yaml: not UTF-8 text",)),
    "oversized spec": C(lambda w, d: text(d, "# " + "x" * (1 << 20) + "\n"), ("job.yaml: larger than",)),
    "binary spec": C(lambda w, d: text(d, b"\x00\x01\x02PK\x03\x04"), ("job.yaml: not valid YAML",)),
    # -- YAML
    "unclosed flow mapping": C(lambda w, d: text(d, "model: {name: mlp\n"), ("job.yaml: not valid YAML",)),
    "tab indentation": C(lambda w, d: text(d, "model:\n\tname: mlp\n"), ("job.yaml: not valid YAML",)),
    "bad indentation": C(lambda w, d: text(d, "model:\n  name: mlp\n layers: 2\n"), ("not valid YAML",)),
    "top level is a list": C(lambda w, d: text(d, "- model\n- data\n"), ("top level must be a mapping", "list")),
    "top level is a string": C(lambda w, d: text(d, "just some words\n"), ("top level must be a mapping", "str")),
    "duplicate top-level key": C(lambda w, d: text(d, yaml_of(w, d) + "model: {name: mlp}\n"),
                                 ("not valid YAML", "duplicate key 'model'")),
    "duplicate nested key": C(lambda w, d: text(d, yaml_of(w, d).replace("units: 16", "units: 16\n  units: 32")),
                              ("duplicate key 'units'", "line")),
    "alias": C(lambda w, d: text(d, yaml_of(w, d) + "x: &a [1]\ny: *a\n"), ("aliases (*name) are not allowed",)),
    "python tag": C(lambda w, d: text(d, yaml_of(w, d) + "x: !!python/name:os.system\n"), ("not valid YAML",)),
    "impossible date": C(lambda w, d: text(d, yaml_of(w, d).replace("name: bad", "name: 2024-02-30")),
                         ("job.yaml: not valid YAML", "day is out of range for month")),
    "set tag on a scalar": C(lambda w, d: text(d, yaml_of(w, d) + "x: !!set 0\n"), ("expected a mapping node",)),
    "list as mapping key": C(lambda w, d: text(d, "? [a, b]\n: 1\n"), ("a mapping key must be a plain value",)),
    "nested too deep": C(lambda w, d: text(d, nested(500)), ("nested deeper than 64 levels",)),
    # -- schema: unknown keys, types, ranges, names
    "unknown top-level key": C(lambda w, d: spec(d, {**good(w, d), "trainer": {}}),
                               ("job.yaml: trainer: unknown key",)),
    "unknown nested key": C(lambda w, d: spec(d, good(w, d, train={"learning_rate": 0.1})),
                            ("train.learning_rate: unknown key",)),
    "missing section": C(lambda w, d: spec(d, {k: v for k, v in good(w, d).items() if k != "run"}),
                         ("job.yaml: run: Field required",)),
    "missing data.path": C(lambda w, d: spec(d, {**good(w, d), "data": {"features": ["x"]}}),
                           ("data.path: Field required",)),
    "section is a list": C(lambda w, d: spec(d, {**good(w, d), "train": [1, 2]}), ("train: Input should be",)),
    "string for an int": C(lambda w, d: spec(d, good(w, d, train={"epochs": "ten"})),
                           ("train.epochs: Input should be a valid integer",)),
    "float for an int": C(lambda w, d: spec(d, good(w, d, model={"units": 16.5})), ("model.units:",)),
    "batch size zero": C(lambda w, d: spec(d, good(w, d, train={"batch_size": 0})),
                         ("train.batch_size: Input should be greater than or equal to 1",)),
    "val_fraction above 1": C(lambda w, d: spec(d, good(w, d, data={"val_fraction": 1.5})),
                              ("data.val_fraction: Input should be less than 1",)),
    "infinite penalty": C(lambda w, d: text(d, yaml_of(w, d).replace("lr: 0.01", "lr: 0.01\n  l1: .inf")),
                          ("train.l1: Input should be a finite number",)),
    "NaN learning rate": C(lambda w, d: text(d, yaml_of(w, d).replace("lr: 0.01", "lr: .nan")),
                           ("train.lr: Input should be a finite number",)),
    "adam beta of 1.5": C(lambda w, d: spec(d, good(w, d, train={"optimizer": {"name": "adam",
                                                                              "betas": [0.9, 1.5]}})),
                          ("train.optimizer: betas must lie in [0, 1)",)),
    "nesterov without momentum": C(lambda w, d: spec(d, good(w, d, train={"optimizer": {"name": "sgd",
                                                                                        "nesterov": True}})),
                                   ("train.optimizer: nesterov needs momentum > 0",)),
    "unknown model name": C(lambda w, d: spec(d, good(w, d, model={"name": "resnet"})),
                            ("model: unknown name 'resnet'", "'mlp', 'hf'")),
    "unknown method name": C(lambda w, d: spec(d, good(w, d, method={"name": "prune"})),
                             ("method: unknown name 'prune'",)),
    "unknown optimizer name": C(lambda w, d: spec(d, good(w, d, train={"optimizer": {"name": "lbfgs"}})),
                                ("train.optimizer: unknown name 'lbfgs'",)),
    "model without a name": C(lambda w, d: spec(d, {**good(w, d), "model": {"layers": 2}}),
                              ("model: Unable to extract tag using discriminator 'name'",)),
    "run name with a slash": C(lambda w, d: spec(d, good(w, d, run={"name": "a/../b"})),
                               ("run.name: String should match",)),
    "lora on an mlp": C(lambda w, d: spec(d, good(w, d, method={"name": "lora"})),
                        ("method.name: lora needs model.name: hf",)),
    "metric of another task": C(lambda w, d: spec(d, good(w, d, data={"task": "regression"},
                                                         train={"early_stopping": {"metric": "val_accuracy"}})),
                                ("train.early_stopping.metric: 'val_accuracy' is not reported",)),
    "fp16 on CPU": C(lambda w, d: spec(d, good(w, d, train={"precision": "fp16"})),
                     ("train.precision: fp16 needs scaling.use_gpu",)),
    "hf with path and init_from": C(lambda w, d: hf(w, d, model={"init_from": str(w.export)}),
                                    ("model: give exactly one of `path` and `init_from`",)),
    "home of an unknown user": C(lambda w, d: spec(d, good(w, d, data={"path": "~no_such_user_ftray/d.parquet"})),
                                 ("job.yaml: data.path: '~no_such_user_ftray/d.parquet' is not a usable",)),
    # -- --set overrides
    "--set without =": C(lambda w, d: spec(d, good(w, d), "train.lr"),
                         ("--set 'train.lr': expected key.path=value",)),
    "--set with an empty key": C(lambda w, d: spec(d, good(w, d), "=3"), ("expected key.path=value",)),
    "--set below a scalar": C(lambda w, d: spec(d, good(w, d), "train.lr.peak=1"),
                              ("--set train.lr.peak: train.lr is not a mapping",)),
    "--set with bad YAML": C(lambda w, d: spec(d, good(w, d), "train.lr=[0.1,"),
                             ("--set train.lr: not valid YAML",)),
    "--set an unknown key": C(lambda w, d: spec(d, good(w, d), "train.lrr=0.1"), ("train.lrr: unknown key",)),
    "--set a bad value": C(lambda w, d: spec(d, good(w, d), "scaling.num_workers=many"),
                           ("scaling.num_workers: Input should be a valid integer",)),
    "--set an alias": C(lambda w, d: spec(d, good(w, d), "train.lr=*x"), ("--set train.lr: not valid YAML",)),
    "--set on a list spec": C(lambda w, d: text(d, "- 1\n") + ["--set", "train.lr=0.1"],
                              ("top level must be a mapping",)),
    # -- data files
    "missing data file": C(lambda w, d: with_data(w, d, d / "nope.parquet"), ("data.path: ", "no such file")),
    "missing validation file": C(lambda w, d: with_data(w, d, w.blobs, val_path=str(d / "val.parquet")),
                                 ("data.val_path: ", "no such file")),
    "zero-byte parquet": C(lambda w, d: with_data(w, d, file_with(d, "", "empty.parquet")),
                           ("data.path: ", "empty.parquet: cannot read as parquet")),
    "truncated parquet": C(truncated_parquet, ("cut.parquet: cannot read as parquet",)),
    "text file named .parquet": C(lambda w, d: with_data(w, d, file_with(d, "x,label\n1,0\n", "fake.parquet")),
                                  ("fake.parquet: cannot read as parquet",)),
    "parquet declared as csv": C(lambda w, d: with_data(w, d, w.blobs, format="csv"),
                                 ("data.path: ", "cannot read as csv")),
    "unknown extension": C(lambda w, d: with_data(w, d, file_with(d, "hello", "d.txt")), ("set data.format",)),
    "folder without data files": C(empty_folder, ("data.path: ", "cannot tell the format")),
    "CSV without a feature column": C(lambda w, d: with_data(w, d, file_with(d, "f0,f1,label\n1,2,0\n3,4,1\n"),
                                                             features=["f0", "f1", "f2"]),
                                      ("bad.csv: no column 'f2'", "columns: f0, f1, label")),
    "CSV without the label column": C(lambda w, d: csv_data(w, d, "f0,target\n1,0\n3,1\n"),
                                      ("no column 'label'",)),
    "CSV with a ragged row": C(lambda w, d: csv_data(w, d, "f0,label\n1,0\n2,1,7\n"),
                               ("bad.csv: cannot read as csv",)),
    "CSV header only": C(lambda w, d: csv_data(w, d, "f0,label\n"), ("no rows",)),
    "CSV with text in a feature": C(lambda w, d: csv_data(w, d, "f0,label\n1,0\nabc,1\n"),
                                    ("bad.csv: row 1: feature 'f0' is 'abc', not a number",)),
    # pyarrow reads `n/a` as null: the message names such markers, not only an "empty" cell
    "CSV with n/a in a feature": C(lambda w, d: csv_data(w, d, "f0,label\n1,0\nn/a,1\n"),
                                   ("bad.csv: row 1: feature 'f0' has no value", "n/a")),
    "CSV with an empty label": C(lambda w, d: csv_data(w, d, "f0,label\n1,cat\n2,\n3,dog\n"),
                                 ("bad.csv: row 1: label 'label' is blank",)),
    "blank string label": C(lambda w, d: with_data(w, d, parquet(d, pa.table(
        {"x": [[1.0], [2.0], [3.0]], "label": ["cat", "  ", "dog"]}))), ("bad.parquet: row 1: label 'label' is blank",)),
    "CSV with inf feature": C(lambda w, d: csv_data(w, d, "f0,label\n1,0\n2,1\ninf,0\n"),
                              ("bad.csv: row 2: a feature is NaN or infinite",)),
    "NaN in a list feature": C(lambda w, d: with_data(w, d, parquet(d, pa.table(
        {"x": [[1.0, 2.0], [3.0, 4.0], [5.0, float("nan")]], "label": [0, 1, 0]}))),
                               ("bad.parquet: row 2: a feature is NaN or infinite",)),
    "ragged list features": C(lambda w, d: with_data(w, d, write_jsonl(d / "bad.jsonl", [
        {"x": [1.0, 2.0], "label": 0}, {"x": [1.0, 2.0], "label": 1}, {"x": [1.0], "label": 0}])),
                              ("bad.jsonl: row 2: feature 'x' has 1 values, row 0 has 2",)),
    "strings inside list features": C(lambda w, d: with_data(w, d, write_jsonl(d / "bad.jsonl", [
        {"x": ["a"], "label": 0}, {"x": ["b"], "label": 1}])), ("feature 'x' holds string, not numbers",)),
    "malformed JSONL line": C(lambda w, d: with_data(w, d, file_with(
        d, '{"x": [1.0], "label": 0}\n{"x": [2.0\n', "bad.jsonl")), ("bad.jsonl: cannot read as jsonl",)),
    "label outside the classes": C(lambda w, d: with_data(w, d, parquet(d, pa.table(
        {"x": [[1.0], [2.0], [3.0]], "label": ["cat", "dog", "owl"]})), classes=["cat", "dog"]),
                                   ("row 2: label 'owl' is not one of the classes ['cat', 'dog']",)),
    "negative label": C(lambda w, d: with_data(w, d, parquet(d, pa.table({"x": [[1.0], [2.0], [3.0]],
                                                                       "label": [0, 1, -3]}))),
                        ("row 2: label -3 is negative",)),
    "float labels for classification": C(lambda w, d: with_data(w, d, parquet(d, pa.table(
        {"x": [[1.0], [2.0]], "label": [0.5, 1.0]}))), ("classification needs integer or string labels",)),
    "one class only": C(lambda w, d: with_data(w, d, parquet(d, pa.table({"x": [[1.0], [2.0]], "label": [4, 4]})),
                                               classes=[4]), ("data.classes: classification needs at least 2",)),
    "empty dataset": C(lambda w, d: with_data(w, d, parquet(d, blobs(0))), ("bad.parquet: no rows",)),
    "NaN regression target": C(lambda w, d: with_data(w, d, parquet(d, pa.table(
        {"x": [[1.0], [2.0], [3.0]], "label": [0.1, float("nan"), 0.3]})), task="regression"),
                               ("bad.parquet: row 1: target is NaN or infinite",)),
    "string regression target": C(lambda w, d: with_data(w, d, parquet(d, pa.table(
        {"x": [[1.0], [2.0]], "label": ["a", "b"]})), task="regression"), ("regression targets in 'label'",)),
    "validation rows of another width": C(lambda w, d: with_data(w, d, w.blobs, val_path=str(parquet(
        d, blobs(20, width=5), "val.parquet"))), ("val.parquet: 5 feature values per row, training data has 8",)),
    "split leaves no training rows": C(lambda w, d: with_data(w, d, parquet(d, pa.table(
        {"x": [[1.0], [2.0]], "label": [0, 1]})), val_fraction=0.9), ("data.val_fraction: 0.9 of 2 rows",)),
    "hf text column of numbers": C(lambda w, d: hf(w, d, path=str(write_jsonl(d / "t.jsonl", [
        {"text": 1, "label": 0}, {"text": 2, "label": 1}]))), ("t.jsonl: text column 'text' has type int64",)),
    "hf example too long": C(lambda w, d: hf(w, d, path=str(write_jsonl(d / "t.jsonl", [
        {"text": "short", "label": 0}, {"text": "word " * 40, "label": 1}])), truncation="none", val_fraction=0.5),
                             ("t.jsonl: row 1: ", "model.max_length is 16 (data.truncation: none)")),
    # -- chat data (data.messages)
    "chat row that is not a list of turns": C(lambda w, d: chat(w, d, "hello"),
                                              ("chats.jsonl: row 3: 'messages' is not a list of {role, content} turns",)),
    "chat turn that is not a mapping": C(lambda w, d: chat(w, d, ["hi", "there"]),
                                         ("chats.jsonl: row 3: 'messages' turn 0 is not a {role, content} mapping",)),
    "chat turn with an unknown role": C(lambda w, d: chat(w, d, [{"role": "user", "content": "hi"},
                                                                {"role": "bot", "content": "hey"}]),
                                        ("chats.jsonl: row 3: 'messages' turn 1 has unknown role 'bot'",)),
    "chat turn without content": C(lambda w, d: chat(w, d, [{"role": "user"}, {"role": "assistant", "content": "a"}]),
                                   ("chats.jsonl: row 3: 'messages' turn 0 (user) has no content",)),
    "chat content that is not a string": C(lambda w, d: chat(w, d, [{"role": "user", "content": 3},
                                                                   {"role": "assistant", "content": "a"}]),
                                           ("row 3: 'messages' turn 0 (user): content is int, not a string",)),
    "chat without an assistant turn": C(lambda w, d: chat(w, d, GOOD_CHAT[:2]),
                                        ("chats.jsonl: row 3: 'messages' has no assistant turn",)),
    "chat data without the messages column": C(lambda w, d: chat(w, d, messages="conversation"),
                                               ("chats.jsonl: no column 'conversation' (columns: messages)",)),
    "chat messages stored as strings": C(lambda w, d: chat(w, d, path=str(parquet(d, pa.table(
        {"messages": [json.dumps(GOOD_CHAT)] * 4})))), ("bad.parquet: row 0: 'messages' is not a list of",)),
    "chat too long without truncation": C(lambda w, d: chat(w, d, [GOOD_CHAT[0], {"role": "user", "content": "hi " * 80},
                                                                  GOOD_CHAT[2]], truncation="none"),
                                          ("chats.jsonl: row 3: the chat is ", "data.truncation is none")),
    "chat whose first reply cannot fit": C(lambda w, d: chat(w, d, [{"role": "system", "content": "be " * 80},
                                                                   *GOOD_CHAT[1:]]),
                                           ("chats.jsonl: row 3: the turns before the first assistant reply",
                                            "no assistant token would be learned")),
    "chat tokenizer without a template": C(lambda w, d: chat(w, d, chat_template="tokenizer"),
                                           ("data.chat_template: ", "has no chat template; set data.chat_template",)),
    "chat beside prompt columns": C(lambda w, d: chat(w, d, prompt="p", response="r"),
                                    ("data.messages: give data.messages or data.text or data.prompt/response",)),
    "chat template without messages": C(lambda w, d: hf(w, d, chat_template="chatml"),
                                        ("data.chat_template: a chat template is for data.messages",)),
    "train_on without messages": C(lambda w, d: hf(w, d, train_on="all"), ("data.train_on: train_on is for data.messages",)),
    "chat for a classifier": C(lambda w, d: chat(w, d, task="classification", label="label"),
                               ("data.messages: chat columns are for data.task: causal_lm",)),
    "unknown chat template": C(lambda w, d: chat(w, d, chat_template="llama9"), ("data.chat_template: Input should be",)),
    # -- preference pairs (method.name: dpo / simpo)
    "pair whose chosen is its rejected": C(lambda w, d: pairs(w, d, {**GOOD_PAIR, "rejected": "grass is green."}),
                                           ("pairs.jsonl: row 3: 'chosen' and 'rejected' are the same answer",)),
    "pairs without the rejected column": C(lambda w, d: pairs(w, d, rejected="worse"),
                                           ("pairs.jsonl: no column 'worse' (columns: prompt, chosen, rejected)",)),
    "pairs without a rejected column named": C(lambda w, d: pairs(w, d, rejected=None),
                                               ("data.rejected: method.name: dpo needs the column",)),
    "pairs for a method without pairs": C(lambda w, d: hf(w, d, chosen="text"),
                                          ("data.chosen: preference pairs are for method.name: dpo or simpo",)),
    # -- exported models and checkpoints (model.init_from, method.teacher, method.adapter_from)
    "init_from a missing folder": C(lambda w, d: init_from(w, d, d / "no_run"),
                                    ("model.init_from: ", "holds no exported ftray model")),
    "init_from a data file": C(lambda w, d: init_from(w, d, w.blobs), ("model.init_from: ", "blobs.parquet")),
    "corrupt ftray_model.json": C(lambda w, d: bad_config(w, d, b'{"builder": '),
                                  ("model.init_from: ", "ftray_model.json: not a readable JSON file")),
    "ftray_model.json not UTF-8": C(lambda w, d: bad_config(w, d, b"\xff\xfe"),
                                    ("ftray_model.json: not a readable JSON file",)),
    "ftray_model.json is a list": C(lambda w, d: bad_config(w, d, b"[1, 2]"),
                                    ("ftray_model.json: not an ftray model config", "builder")),
    "ftray_model.json unknown builder": C(lambda w, d: bad_config(w, d, json.dumps(
        {"builder": "xgboost", "info": {"task": "classification"}}).encode()),
                                          ("not an ftray model config", "'hf', 'mlp'")),
    "ftray_model.json without info": C(lambda w, d: bad_config(w, d, json.dumps({"builder": "mlp"}).encode()),
                                       ("not an ftray model config", "info")),
    "hf export given to an mlp": C(lambda w, d: bad_config(w, d, json.dumps(
        {"builder": "hf", "info": {"task": "classification"}}).encode()),
                                   ("model.init_from: ", "is a 'hf' model, not an mlp")),
    "truncated model.safetensors": C(lambda w, d: bad_weights(w, d, truncated(w.export / "model" / WEIGHTS)),
                                     ("model.init_from: ", "model.safetensors: unreadable safetensors file")),
    "garbage model.safetensors": C(lambda w, d: bad_weights(w, d, b"not a tensor file" * 8),
                                   ("model.safetensors: unreadable safetensors file",)),
    "missing model.safetensors": C(lambda w, d: bad_weights(w, d, None),
                                   ("model.init_from: ", "no *.safetensors weights")),
    "pickled weights only": C(pickle_only_export, ("model.init_from: ", "ftray loads safetensors only")),
    "checkpoint with damaged weights": C(lambda w, d: bad_weights(w, d, b""),
                                         ("model.init_from: ", "unreadable safetensors file")),
    "init_from of another width": C(lambda w, d: init_from(w, d, export_mlp(d / "wide", units=32)),
                                    ("model.init_from: ", "shape mismatch", "backbone.0.0.weight")),
    "init_from with another head": C(lambda w, d: init_from(w, d, export_mlp(d / "two", classes=2)),
                                     ("model.init_from: ", "the head differs")),
    "init_from with more layers": C(lambda w, d: init_from(w, d, w.export, model={"layers": 2}),
                                    ("model.init_from: ", "missing ['backbone.1.0.bias'",)),
    "teacher with other classes": C(lambda w, d: teacher(w, d, export_mlp(d / "t2", classes=2)),
                                    ("method.teacher: its classes [0, 1] differ from the data's [0, 1, 2]",)),
    "teacher of another task": C(lambda w, d: teacher(w, d, export_mlp(d / "reg", task="regression")),
                                 ("method.teacher: a regression model cannot teach a classification task",)),
    "teacher folder missing": C(lambda w, d: teacher(w, d, d / "gone"), ("method.teacher: ", "holds no exported")),
    "teacher with corrupt config": C(lambda w, d: teacher(w, d, damaged_export(w, d, "ftray_model.json", b"{{")),
                                     ("method.teacher: ", "not a readable JSON file")),
    "lora target matches nothing": C(lambda w, d: hf(w, d, method={"name": "lora",
                                                                   "target_modules": ["qkv_fused"]}),
                                     ("method.target_modules: 'qkv_fused' matches no module",)),
    "lora adapter_from without adapter": C(lambda w, d: hf(w, d, method={"name": "lora",
                                                                         "adapter_from": str(w.export)}),
                                           ("method.adapter_from: ", "holds no exported LoRA adapter")),
    # -- QLoRA (`method.quantize: nf4`) on a model or set-up that cannot take it
    "quantize a GPT-2 (Conv1D layers)": C(lambda w, d: hf(w, d, model={"config": GPT2_CONFIG},
                                                          method={"name": "lora", "quantize": "nf4"}),
                                          ("method.quantize: nf4: ", "no nn.Linear layers", "Conv1D")),
    "quantize layers of odd size": C(lambda w, d: hf(w, d, model={"config": ODD_BERT_CONFIG},
                                                     method={"name": "lora", "quantize": "nf4"}),
                                     ("method.quantize: nf4 stores weights in blocks of 64",
                                      "0.attention.self.query")),
    "quantize without adapters": C(lambda w, d: hf(w, d, method={"name": "attention", "quantize": "nf4"}),
                                   ("method.quantize: needs method.lora: true",)),
    "quantize under fsdp": C(lambda w, d: hf(w, d, method={"name": "lora", "quantize": "nf4"})
                             + ["--set", "scaling.strategy=fsdp"],
                             ("method.quantize: nf4 runs under scaling.strategy: ddp only",)),
    "adapter-only export into an ensemble": C(lambda w, d: hf(w, d, method={"name": "lora", "export": "adapter"})
                                              + ["--set", "tune={space: {train.lr: {loguniform: [0.001, 0.01]}}, ensemble: {top_k: 2}}"],
                                              ("method.export: adapter leaves no merged model for tune.ensemble",)),
    "liger kernels on CPU": C(lambda w, d: hf(w, d, model={"kernels": "liger"}),
                              ("model.kernels: liger's kernels run on GPUs",)),
    # Without the liger-kernel package (CI) the message says so; with it, BERT has no Liger kernels.
    "liger kernels unavailable": C(lambda w, d: hf(w, d, model={"kernels": "liger"}) + ["--set", "scaling.use_gpu=true"],
                                   ("model.kernels: liger ",)),
    "fused loss without liger": C(lambda w, d: hf(w, d, model={"fused_loss": True}),
                                  ("model.fused_loss: the fused loss is Liger's; set model.kernels: liger",)),
    "hf model folder missing": C(lambda w, d: hf(w, d, model={"path": str(d / "no_model")}),
                                 ("model.path: ", "no such model folder")),
    "hf model with corrupt config.json": C(hf_corrupt_config, ("model.path: cannot load a model from",)),
    "hf init_from with truncated weights": C(hf_truncated_export,
                                             ("model.init_from: ", "unreadable safetensors file")),
    # -- Hugging Face datasets (save_to_disk folders)
    "dataset folder without the split": C(lambda w, d: saved_dataset(w, d, val_split="validation"),
                                          ("data.val_split: split 'validation' not in ['test', 'train']",)),
    "dataset folder without the column": C(lambda w, d: saved_dataset(w, d, features=["pixels"]),
                                           ("data.path: ", "[split 'train']: no column 'pixels' (columns: x, label)")),
    "split of a plain file": C(lambda w, d: with_data(w, d, w.blobs, val_split="test"),
                               ("data.val_split: 'test' names a split of a Hugging Face dataset",)),
}


# ---------------------------------------------------------------------------------- the tests


def locates(message: str, argv: list[str]) -> bool:
    """The message says where: the spec file, a data or model file, a key path, or --set."""
    return (argv[0] in message or "--set" in message
            or re.search(r"\b(model|data|method|train|scaling|run)(\.\w+)*: ", message) is not None)


def test_the_corpus_has_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_clear_message(name, world, tmp_path, capsys, no_ray):
    case = CASES[name]
    argv = case.make(world, tmp_path)
    for command in ("validate", "run"):
        code = cli.main([command, *argv])
        out, err = capsys.readouterr()
        assert code == 2, f"{command}: exit {code}\n{err[-2000:]}"
        assert err.startswith("ftray: error: ") and err.count("ftray: error: ") == 1, err
        assert "Traceback" not in err and out == "", (out, err)
        for fragment in case.expect:
            assert fragment in err, f"{fragment!r} not in {err!r}"
        assert locates(err, argv), err


def test_the_good_inputs_the_cases_start_from_are_valid(world, tmp_path, capsys, no_ray):
    """Each case differs from a valid input by its one defect: the base inputs themselves pass."""
    bases = {
        "mlp": lambda w, d: spec(d, good(w, d)),
        "init_from": lambda w, d: init_from(w, d, w.export),
        "transfer from a 2-class head": lambda w, d: init_from(w, d, export_mlp(d / "two", classes=2),
                                                               method={"name": "transfer"}),
        "teacher": lambda w, d: teacher(w, d, w.export),
        "hf": lambda w, d: hf(w, d),
        "lora": lambda w, d: hf(w, d, method={"name": "lora", "target_modules": ["query", "value"]}),
        "qlora": lambda w, d: hf(w, d, method={"name": "lora", "quantize": "nf4", "dora": True}),
        "csv": lambda w, d: csv_data(w, d, "f0,label\n1,0\n2,1\n3,0\n4,1\n5,0\n"),
        "chat": lambda w, d: chat(w, d, GOOD_CHAT),
        "pairs": lambda w, d: pairs(w, d, GOOD_PAIR),
    }
    for name, make in bases.items():
        (tmp_path / name).mkdir()
        assert cli.main(["validate", *make(world, tmp_path / name)]) == 0, (name, capsys.readouterr().err)
        assert ": ok (" in capsys.readouterr().out


def test_nesting_below_the_limit_is_still_read(tmp_path):
    """The depth limit refuses only absurd documents: a 60-deep value parses (and fails schema)."""
    (tmp_path / "job.yaml").write_text(nested(60))
    with pytest.raises(SpecError, match="model: "):
        load_spec(tmp_path / "job.yaml")
