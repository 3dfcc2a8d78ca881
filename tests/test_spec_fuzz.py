"""Property-based fuzzing of the spec loader: whatever the input, `load_spec` returns a valid
JobSpec or raises SpecError (which the CLI turns into exit 2). Any other exception would be a
traceback for the user; a hang would be a stuck job submission.

Sources of input: arbitrary text built from YAML's own punctuation and the schema's words, flow
documents from a small YAML grammar (collections as keys, deep nesting), arbitrary bytes,
arbitrary values put at arbitrary key paths of a valid spec, arbitrary strings as paths, and
arbitrary `--set` strings. One exhaustive (not random) check rides along: every float field of
the schema refuses .inf and .nan.
"""

from __future__ import annotations

import copy
import os
import string
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from ftray.spec import JobSpec, SpecError, load_spec
from tests.hang import no_hang

# No Hypothesis deadline: the machine is shared, and a slow example is not a failure. A hang is:
# one load takes milliseconds (PyYAML's look-ahead over a 1 MiB line of brackets ~0.2 s idle), so
# HANG_S, hundreds of times that, trips only on a real loop in the loader.
# FTRAY_FUZZ_EXAMPLES=5000 runs a longer hunt than CI's default.
FUZZ = settings(max_examples=int(os.environ.get("FTRAY_FUZZ_EXAMPLES", "200")),
                deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
HANG_S = 60

BASE = {
    "model": {"name": "mlp", "layers": 1, "units": 8},
    "data": {"path": "d.parquet", "features": ["x"]},
    "train": {"epochs": 1, "batch_size": 8},
    "run": {"name": "fuzz"},
}


def schema_fields(model: type[BaseModel], prefix: str = "", context: tuple = ()):
    """(dotted key path, annotation, context) of every field of the schema, through each member of
    the discriminated unions; `context` lists the (path, name) choices that select those members."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path, field.annotation, context
        stack = [field.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                tag = t.model_fields.get("name")
                choice = (((path, tag.default),) if tag is not None and typing.get_origin(tag.annotation)
                          is typing.Literal else ())
                yield from schema_fields(t, path + ".", context + choice)
            else:
                stack.extend(typing.get_args(t))


FIELDS = list(schema_fields(JobSpec))
PATHS = sorted({path for path, _, _ in FIELDS})
PATH_FIELDS = ["data.path", "data.val_path", "model.init_from", "run.storage_path", "method.teacher",
               "method.adapter_from"]
WORDS = sorted({p.split(".")[-1] for p in PATHS} | {"mlp", "hf", "full", "transfer", "lora", "distill",
                                                     "adamw", "sgd", "cosine", "plateau", "classification",
                                                     "causal_lm", "fp16", "bf16", "true", "null", "~", ".inf",
                                                     ".nan", "-1", "0", "1e309", "0x10", "2020-01-01"})
TOKENS = ["\n", "\n  ", "\n    ", "  ", ": ", ":", "- ", "-", "[", "]", "{", "}", ", ", "#", "? ", "&a ", "*a",
          "!!python/object/apply:os.system ", "!!python/name:os.system ", "!!binary ", "!!set ", "!!omap ",
          "!!map ", "!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!str ", "2020-02-30",
          "<<: ", "'", '"', "|\n  ", ">\n  ", "---\n", "...\n", "%YAML 1.1\n", "\t", "\\", "\x00", "\ufeff"]

yamlish = st.lists(st.sampled_from(TOKENS) | st.sampled_from(WORDS) |
                   st.text(st.characters(exclude_categories=("Cs",)), max_size=5), max_size=60).map("".join)
scalars = (st.none() | st.booleans() | st.integers() | st.floats() |
           st.text(st.characters(exclude_categories=("Cs",)), max_size=20) | st.sampled_from(WORDS) |
           st.dates())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                      st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=5), inner, max_size=4),
                      max_leaves=12)

# A small YAML flow grammar: any node may be a key, collections included, and nesting may be deep.
flow_scalar = st.sampled_from(WORDS) | st.from_regex(r"[A-Za-z0-9_.~/-]{1,8}", fullmatch=True)
flow = st.recursive(
    flow_scalar,
    lambda inner: (st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]") |
                   st.lists(st.tuples(inner, inner), max_size=3).map(
                       lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}") |
                   st.tuples(inner, inner).map(lambda kv: f"{{? {kv[0]} : {kv[1]}}}")),
    max_leaves=10)
deep = st.builds(lambda n, open_, node: open_ * n + node + {"[": "]", "{a: ": "}"}[open_] * n,
                 st.integers(0, 1000), st.sampled_from(["[", "{a: "]), flow)
flow_document = st.lists(st.tuples(st.sampled_from(sorted(BASE) + ["method", "scaling", "tune"]) | flow,
                                   flow | deep), min_size=1, max_size=6).map(
    lambda items: "".join(f"{k}: {v}\n" for k, v in items))

# Strings a path field may hold: anything, and the shapes that trip path handling (`~user`, NUL).
path_strings = (st.text(st.characters(exclude_categories=("Cs",)), max_size=30) |
                st.builds(lambda user, rest: f"~{user}/{rest}", st.text(string.ascii_lowercase, min_size=1,
                                                                        max_size=12), st.text(max_size=8)) |
                st.sampled_from(["", "~", ".", "..", "/", "//", "a\x00b", "file://", "s3://", "package:",
                                 "package:/x", "~/" + "x" * 300, "/" + "a/" * 2000]))


def outcome(body: str | bytes, overrides: list[str] = ()) -> JobSpec | SpecError:
    """load_spec of a file with this content: the JobSpec, or the SpecError it raised.
    Any other exception propagates and fails the property."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
        try:
            with no_hang(HANG_S, "load_spec"):
                return load_spec(path, list(overrides))
        except SpecError as e:
            assert str(e).strip(), "a SpecError must say something"
            return e


def set_path(raw: dict, dotted: str, value) -> dict:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value
    return raw


def test_the_base_spec_is_valid():
    assert isinstance(outcome(yaml.safe_dump(BASE)), JobSpec)
    assert {"model.units", "train.optimizer.momentum", "method.teacher", "run.name"} <= set(PATHS)


@FUZZ
@given(yamlish)
def test_yamlish_text_gives_a_spec_or_a_spec_error(text):
    outcome(text)


@FUZZ
@given(flow_document)
def test_flow_documents_give_a_spec_or_a_spec_error(text):
    outcome(text)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_spec_or_a_spec_error(data):
    outcome(data)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(PATHS) | st.text(max_size=8), values), min_size=1, max_size=4))
def test_values_at_any_key_path_give_a_spec_or_a_spec_error(changes):
    raw = copy.deepcopy(BASE)
    for dotted, value in changes:
        set_path(raw, dotted, value)
    result = outcome(yaml.safe_dump(raw, allow_unicode=True))
    if isinstance(result, JobSpec):  # what passes validation is complete: it re-reads to itself
        assert outcome(yaml.safe_dump(result.model_dump(mode="json"))) == result


@FUZZ
@given(st.sampled_from(PATH_FIELDS), path_strings)
def test_any_string_as_a_path_gives_a_spec_or_a_spec_error(key, value):
    raw = copy.deepcopy(BASE)
    if key.startswith("method."):
        set_path(raw, "method.name", "distill" if key == "method.teacher" else "lora")
    outcome(yaml.safe_dump(set_path(raw, key, value), allow_unicode=True))


@FUZZ
@given(st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6), values, max_size=6))
def test_arbitrary_mappings_give_a_spec_or_a_spec_error(raw):
    outcome(yaml.safe_dump(raw, allow_unicode=True))


override_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
structured_override = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(PATHS) | st.text(max_size=10),
                                yamlish | st.sampled_from(WORDS))


@FUZZ
@given(st.lists(override_text | structured_override, min_size=1, max_size=4))
def test_set_overrides_give_a_spec_or_a_spec_error(overrides):
    outcome(yaml.safe_dump(BASE), overrides)


def float_slot(annotation) -> str | None:
    """How a float goes into a field of this type: "BAD", "[BAD, 0.5]" (a tuple of floats), or None."""
    args = set(typing.get_args(annotation))
    if typing.get_origin(annotation) is tuple:
        return "[BAD, 0.5]" if args == {float} else None
    if annotation is float or (float in args and args <= {float, type(None)}):
        return "BAD"
    return None


def base_for(path: str, context: tuple) -> dict:
    """A valid spec holding `path`, with the union members in `context` (method: lora needs an hf model)."""
    raw = copy.deepcopy(BASE)
    if path.startswith("tune."):  # the sweep section is optional, but needs a search space once given
        raw["tune"] = {"space": {"train.lr": {"choice": [0.1, 0.01]}}}
    for union, name in context:
        set_path(raw, f"{union}.name", name)
    names = dict(context)
    if names.get("model") == "hf" or names.get("method") in ("lora", "attention"):
        raw["model"] = {"name": "hf", "path": "org/model"}
        raw["data"] = {"path": "d.jsonl", "text": "text"}
    if names.get("method") in ("dpo", "simpo"):  # pairs of answers for a causal LM
        raw["model"] = {"name": "hf", "path": "org/model"}
        raw["data"] = {"path": "d.jsonl", "task": "causal_lm", "prompt": "prompt", "chosen": "chosen",
                       "rejected": "rejected", "label": None}
    if names.get("method") == "grpo":  # prompts (and expected answers) for a causal LM
        raw["model"] = {"name": "hf", "path": "org/model"}
        raw["data"] = {"path": "d.jsonl", "task": "causal_lm", "prompt": "prompt", "answer": "answer", "label": None}
    if names.get("model") == "multimodal":  # its tabular encoder reads the base's features
        raw["model"] = {"name": "multimodal", "modalities": ["tabular"]}
    if names.get("method") == "distill":
        raw["method"]["teacher"] = "teacher_run"
    if names.get("method") == "incremental":  # continues an earlier run, replaying its data
        raw["model"]["init_from"] = "old_run"
        raw["method"].update(replay_path="old.parquet", old_val_path="old_val.parquet")
    if names.get("tune.scheduler") in ("pbt", "pb2"):  # population training: packed, mutable trials
        raw["tune"] = {"space": {"train.lr": {"loguniform": [0.001, 0.1]}}, "trial": "packed",
                       "num_samples": 2, "searcher": "random", "scheduler": {"name": names["tune.scheduler"]}}
    if names.get("method") == "rl":  # learns from an environment: no data, hyperparameters in method
        raw["method"]["env"] = "CartPole-v1"
        del raw["data"], raw["train"]
    return raw


FLOAT_FIELDS = sorted({(path, context) for path, annotation, context in FIELDS if float_slot(annotation)})
FLOAT_SLOTS = {path: float_slot(annotation) for path, annotation, _ in FIELDS if float_slot(annotation)}


@pytest.mark.parametrize("path, context", FLOAT_FIELDS, ids=[f"{p} {dict(c)}" for p, c in FLOAT_FIELDS])
@pytest.mark.parametrize("bad", [".inf", "-.inf", ".nan"])
def test_every_float_field_refuses_inf_and_nan(path, context, bad):
    raw = base_for(path, context)
    assert isinstance(outcome(yaml.safe_dump(raw)), JobSpec)  # the field's value is the only defect
    body = yaml.safe_dump(set_path(raw, path, "SLOT")).replace("SLOT", FLOAT_SLOTS[path].replace("BAD", bad))
    result = outcome(body)
    assert isinstance(result, SpecError), f"{path}: {bad} accepted"
    assert f"{path}" in str(result) and "finite number" in str(result), str(result)
