"""The `method:` section of `full`."""

from __future__ import annotations

from typing import Literal

from ftray.methods.config import MethodConfig
from ftray.schema import describe


class FullMethod(MethodConfig):
    name: Literal["full"] = describe("Train every parameter of the model.", "full")
