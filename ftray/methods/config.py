"""What every method's config (its `method:` section of the spec) shares.

The rest of ftray asks a method these typed questions instead of reading fields that only some
methods have. Config modules import only pydantic (through `ftray.schema`): `ftray.spec` builds its
`method` union from them before Ray starts; a method's hooks, which need torch, load on first use.
"""

from __future__ import annotations

import importlib
from typing import ClassVar

from ftray.schema import Strict


class MethodConfig(Strict):
    """Base of every method's config; each subclass adds `name: Literal[...]` and its fields."""

    # False: the method learns without `data` (rl, from its environment). JobSpec's supervised
    # rules then do not apply; the method's own `check_job` covers the whole spec.
    supervised: ClassVar[bool] = True
    # Fields holding local paths: pinned to absolute paths before the spec reaches Ray workers.
    path_fields: ClassVar[tuple[str, ...]] = ()
    # True: rows are preference pairs (`data.chosen`, `data.rejected` answers to one prompt).
    pairs: ClassVar[bool] = False
    # True: rows are prompts (`data.prompt` or `data.messages`, optional `data.answer`) that the
    # method answers itself while it trains (grpo).
    prompts: ClassVar[bool] = False
    # The validation metrics the method reports in place of the task's (`TASK_METRICS`); the first
    # is the one the console and the curves show. None: the task's.
    metrics: ClassVar[tuple[str, ...] | None] = None

    @property
    def replaces_head(self) -> bool:
        """Whether a model started from earlier weights gets a fresh head sized for this data's
        labels instead of the saved one."""
        return False

    @property
    def precomputes_teacher(self) -> bool:
        """Whether a teacher's logits are computed once with Ray Data and streamed as a column."""
        return False

    def check_job(self, spec) -> None:
        """This method's rules across the spec's sections (`spec`: the whole JobSpec); raise
        ValueError (JobSpec reports it). Not typed here: the spec is built from these classes, and a
        config module imports nothing above `ftray.schema`."""

    @classmethod
    def hooks(cls) -> type:
        """The method's training hooks (`ftray.methods.base.Method`): `HOOKS` of the `hooks.py` beside
        this config, imported on first use. Looked up by that fixed layout rather than imported
        here, so that the spec's layer never imports the training layer (torch, models)."""
        if not cls.supervised:
            raise NotImplementedError(f"{cls.__name__} has no training hooks (it runs through its own runner)")
        return importlib.import_module(cls.__module__.rpartition(".")[0] + ".hooks").HOOKS
