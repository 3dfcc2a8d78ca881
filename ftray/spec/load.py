"""Reading a job spec: safe YAML, `--set` overrides, readable errors, and local paths pinned.

`load_spec` is the only way in: it reads YAML safely, applies `--set key.path=value` overrides to
the raw mapping and validates the result, so an override goes through exactly the same checks as
the file.
"""

from __future__ import annotations

import copy
import difflib
import os
import sys
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ftray.schema import SpecError
from ftray.spec.job import JobSpec
from ftray.spec.model import HFModel, MultimodalModel

MAX_SPEC_BYTES = 1 << 20  # a job spec is a page of YAML; anything bigger is a mistake
# A spec nests a few levels; PyYAML's composer recurses per level, so a deeper document would end
# in a RecursionError (a traceback, not exit 2) long before it could mean anything.
MAX_SPEC_DEPTH = 64


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases (no Python tags, no alias bombs)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed in a job spec", event.start_mark)
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_SPEC_DEPTH:
            raise yaml.constructor.ConstructorError(
                None, None, f"nested deeper than {MAX_SPEC_DEPTH} levels", self.peek_event().start_mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):  # `!!set 0`: let the base class raise its YAMLError
            return super().construct_mapping(node, deep=deep)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # `{[1]: x}`: the set below would raise a bare TypeError
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value, not a list or mapping",
                    key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not valid YAML: {e}") from None
    except (ValueError, TypeError, LookupError, AttributeError, OverflowError) as e:
        # PyYAML's scalar constructors raise plain Python errors on values that only look like
        # their type (`2020-02-30` read as a date, `!!int x`): still bad YAML in the input.
        raise SpecError(f"{source}: not valid YAML: a value cannot be read as its type "
                        f"({type(e).__name__}: {e})") from None


def parse_override(item: str) -> tuple[str, Any]:
    """`key.path=value` -> ("key.path", value parsed as a YAML scalar or flow collection)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {item!r}: expected key.path=value")
    return key.strip(), parse_yaml(value, f"--set {key}")


def apply_overrides(raw: dict, overrides: list[tuple[str, Any]]) -> dict:
    """Return a copy of `raw` with each dotted key set; missing mappings on the way are created."""
    out = copy.deepcopy(raw)
    for key, value in overrides:
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        # Discriminated unions put the chosen tag in the location (`model.mlp.units`): drop it.
        loc = _without_union_tags(e["loc"])
        path = ".".join(loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(e["loc"])
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown name {e['input'].get('name')!r}; choose one of {e['ctx']['expected_tags']}" \
                if isinstance(e.get("input"), dict) else msg
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def _did_you_mean(loc: tuple) -> str:
    """`; did you mean 'lr'?` for an unknown key close to a field of its section, else ''."""
    names = _section_fields(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _models_in(annotation) -> list[type[BaseModel]]:
    """The spec models an annotation can hold (through Optional, unions, Annotated, lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _section_fields(loc: tuple) -> list[str]:
    """The field names of the spec section at a pydantic error location (raw: union tags kept,
    so `model.mlp` is the mlp builder's section); [] where the location is no model section."""
    model, union = JobSpec, []
    for part in loc:
        if union:  # the part after a union field is the tag pydantic chose
            model = next((m for m in union if part in _tags(m)), None)
            union = []
            if model is None:
                return []
            continue
        if isinstance(part, int):  # an item of a list field
            continue
        field = model.model_fields.get(part)
        found = _models_in(field.annotation) if field else []
        if not found:
            return []
        model, union = (found[0], []) if len(found) == 1 else (None, found)
    return list(model.model_fields) if model else []


def _tags(model: type[BaseModel]) -> tuple:
    field = model.model_fields.get("name")
    return typing.get_args(field.annotation) if field else ()


def _union_fields(model: type[BaseModel], prefix: tuple = ()) -> set[tuple]:
    """Paths of the discriminated-union fields (`model`, `method`, `train.optimizer`)."""
    out = set()
    for name, field in model.model_fields.items():
        path = prefix + (name,)
        if field.discriminator:
            out.add(path)
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out |= _union_fields(arg, path)
    return out


def _without_union_tags(loc: tuple) -> list[str]:
    """An error location with the union tag pydantic inserts after a union field removed."""
    out: list[str] = []
    for i, part in enumerate(loc):
        if i and tuple(loc[:i]) in _UNION_FIELDS:
            continue  # `model.mlp.units` -> `model.units`
        out.append(str(part))
    return out


def validate(raw: Any, source: str) -> JobSpec:
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else type(raw).__name__
        raise SpecError(f"{source}: the top level must be a mapping of sections, not {kind}")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(format_validation_error(source, e)) from None


def read_spec_file(path: str | os.PathLike) -> dict:
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"{path}: is a folder, not a spec file")
    if not p.is_file():
        raise SpecError(f"{path}: no such spec file")
    if p.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES} bytes; a job spec is a short YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:  # unreadable (permissions, a dangling mount): still bad input
        raise SpecError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_yaml(text, str(path))


# A name ending so is a data file (missing, it is reported as one), never a Hub dataset id.
DATA_FILE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


def _absolute(path: str | None, key: str, local_only_if_exists: bool = False) -> str | None:
    """Local paths made absolute against the current directory; URIs (and hub ids) left alone."""
    if path is None or "://" in path or path.startswith("package:"):
        return path
    try:
        local = Path(path).expanduser()
        if local_only_if_exists and not (local.exists() or path.startswith((".", "/", "~"))
                                         or local.suffix.lower() in DATA_FILE_SUFFIXES):
            return path  # a hub id such as org/model
        return str(local.resolve())
    except (RuntimeError, ValueError, OSError) as e:  # `~nosuchuser/...`, a NUL byte, a symlink loop
        raise SpecError(f"{key}: {path!r} is not a usable local path ({e})") from None


def with_absolute_paths(spec: JobSpec) -> JobSpec:
    """Ray workers do not share the driver's working directory: pin every local path."""
    model = spec.model.model_copy(update={"init_from": _absolute(spec.model.init_from, "model.init_from")})
    method = spec.method
    for key in method.path_fields:  # the chosen method's own path fields (`method.teacher`, ...)
        if getattr(method, key):
            method = method.model_copy(update={key: _absolute(getattr(method, key), f"method.{key}")})
    if isinstance(model, HFModel):
        model = model.model_copy(update={"path": _absolute(model.path, "model.path", local_only_if_exists=True)})
    if isinstance(model, MultimodalModel) and model.text.path:
        text = model.text.model_copy(update={"path": _absolute(model.text.path, "model.text.path",
                                                               local_only_if_exists=True)})
        model = model.model_copy(update={"text": text})
    return spec.model_copy(update={
        "model": model,
        "method": method,
        "data": spec.data and spec.data.model_copy(update={
            # A Hugging Face Hub dataset id (`owner/name`) is no local path.
            "path": _absolute(spec.data.path, "data.path", local_only_if_exists=True),
            "val_path": _absolute(spec.data.val_path, "data.val_path", local_only_if_exists=True)}),
        "run": spec.run.model_copy(update={"storage_path": _absolute(spec.run.storage_path,
                                                                     "run.storage_path")}),
    })


# Local paths outside `method` (whose path fields each method's config names: `path_fields`).
PATH_KEYS = (("data", "path"), ("data", "val_path"), ("model", "path"), ("model", "init_from"),
             ("run", "storage_path"))


def pin_paths(raw: dict, spec: JobSpec) -> dict:
    """A copy of the raw mapping with the paths the user gave replaced by `spec`'s pinned ones."""
    out, pinned = copy.deepcopy(raw), spec.model_dump(mode="json")
    for section, key in (*PATH_KEYS, *(("method", key) for key in spec.method.path_fields)):
        if isinstance(out.get(section), dict) and out[section].get(key) is not None:
            out[section][key] = pinned[section][key]
    text = out["model"].get("text") if isinstance(out.get("model"), dict) else None
    if isinstance(text, dict) and text.get("path") is not None:  # a multimodal model's text encoder
        text["path"] = pinned["model"]["text"]["path"]
    if isinstance(out.get("run"), dict) and "storage_path" not in out["run"]:
        out["run"]["storage_path"] = pinned["run"]["storage_path"]
    return out


def load_spec(path: str | os.PathLike, overrides: list[str] = ()) -> JobSpec:
    """Read, override and validate a job spec; raises SpecError naming the file and key path.

    Relative local paths in the result are resolved against the current directory."""
    return load_spec_and_raw(path, overrides)[0]


def load_spec_and_raw(path: str | os.PathLike, overrides: list[str] = ()) -> tuple[JobSpec, dict]:
    """`load_spec`, plus the overridden raw mapping with the same paths pinned (what a sweep
    applies each trial's values to, so that `train.optimizer.name: sgd` replaces only the name)."""
    raw = read_spec_file(path)
    if overrides:
        if not isinstance(raw, dict):
            validate(raw, str(path))  # raises the top-level message
        raw = apply_overrides(raw, [parse_override(o) for o in overrides])
    spec = validate(raw, str(path))
    # os.path's expanduser leaves `~nosuchuser` as it is (pathlib's raises; `_absolute` reports it).
    relative_storage = "://" not in spec.run.storage_path and not os.path.isabs(os.path.expanduser(spec.run.storage_path))
    try:
        spec = with_absolute_paths(spec)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    if relative_storage and os.environ.get(RAY_JOB_ENV):
        warn_job_storage(spec.run.storage_path)
    return spec, pin_paths(raw, spec)


# Set in the driver of a Ray job (`ray job submit`), whose working directory is the job's own
# temporary copy of its working_dir.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def warn_job_storage(resolved: str) -> None:
    """Plain `ray job submit`: a relative run.storage_path lands in the job's temporary copy of the
    working_dir, which Ray deletes later (`ftray submit` passes an absolute one)."""
    print(f"ftray: warning: run.storage_path is relative; inside this Ray job it resolves to {resolved}, "
          "under the job's temporary working_dir copy; give an absolute path or a URI to keep the run",
          file=sys.stderr, flush=True)


_UNION_FIELDS = _union_fields(JobSpec)
