"""The spec reference in README.md, generated from the pydantic models (so it cannot drift).

`ftray reference` prints it; a test checks that README.md holds exactly this text between the
`<!-- spec-reference -->` markers.
"""

from __future__ import annotations

import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ftray.spec import JobSpec

START, END = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"


def _variants(annotation) -> list[type[BaseModel]]:
    """The model classes behind a field (one, or each member of a discriminated union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out = []
    for arg in typing.get_args(annotation):
        out += _variants(arg)
    return out


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, list):
            return f"`{value}`"
        return f"`{value.name}`" if "name" in type(value).model_fields else "see section"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{field.default}`" if field.default is not None else "`null`"


def _type(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    text = repr(annotation).replace("typing.", "")
    for noise in ("<class '", "'>", "ftray.spec."):
        text = text.replace(noise, "")
    return text.replace("|", "\\|")


def _section(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    nested = []
    for name, field in model.model_fields.items():
        variants = _variants(field.annotation)
        if variants:
            names = [v.model_fields["name"].default for v in variants if "name" in v.model_fields]
            kind = "one of: " + ", ".join(f"`{n}`" for n in names) if len(variants) > 1 else "section"
            lines.append(f"| `{prefix}{name}` | {kind} | {_default(field)} | {field.description} |")
            nested += [(v, f"{prefix}{name}.", len(variants) > 1) for v in variants]
        else:
            lines.append(f"| `{prefix}{name}` | {_type(field.annotation)} | {_default(field)} | "
                         f"{field.description} |")
    for variant, sub, is_choice in nested:  # a choice's sections are titled by its `name`
        title = variant.model_fields["name"].default if is_choice else None
        lines += ["", f"### `{sub.rstrip('.')}`" + (f" (name: `{title}`)" if title else ""), "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        _section(variant, sub, lines)


def spec_reference() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    _section(JobSpec, "", lines)
    return "\n".join(lines) + "\n"
