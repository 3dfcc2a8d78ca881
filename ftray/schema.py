"""The building blocks of the typed spec: `Strict` models, described fields and `SpecError`.

They live apart from `ftray.spec` so that the method configs in `ftray.methods` can be built from
them while `ftray.spec` builds its `method` union from the methods' registry: spec -> methods ->
schema, with no import cycle. Only pydantic is imported here (every command imports the spec
before Ray starts, and bad input must exit 2 fast).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SpecError(Exception):
    """Bad input: printed as one message and exit status 2, before Ray starts."""


class Strict(BaseModel):
    # No field means anything at .inf or .nan (an infinite L1 penalty would train on NaN losses).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def describe(text: str, default: Any = ..., **kw) -> Any:
    """A field with its one-line description (the spec reference is generated from them)."""
    return Field(default, description=text, **kw)
