"""Model builders chosen by name in `model.name`.

Every builder returns an `FtModel`: a torch module that maps a batch dict to logits (or
predictions), names its backbone blocks and head (what `transfer` freezes and replaces), and
exports itself to a folder that `model.init_from` and `load_exported` read back.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftray.models.base import EXPORT_CONFIG, FtModel, ModelInfo
from ftray.models.hf import HFClassifier
from ftray.models.mlp import MLP
from ftray.spec import JobSpec, SpecError

MODELS: dict[str, type[FtModel]] = {"mlp": MLP, "hf": HFClassifier}


def build_model(spec: JobSpec, info: ModelInfo) -> FtModel:
    """Build the spec's model for data described by `info`, with pretrained weights if it has any."""
    return MODELS[spec.model.name].build(spec, info)


def check_model_source(spec: JobSpec, info: ModelInfo) -> None:
    """Fail with SpecError (before Ray starts) when the model or its starting weights can't load."""
    MODELS[spec.model.name].check_source(spec, info)


def exported_model_dir(run_or_model_dir: str, key: str) -> Path:
    """The exported model folder of an earlier run (given its run folder or the model folder)."""
    p = Path(run_or_model_dir).expanduser()
    for cand in (p / "model", p):
        if (cand / EXPORT_CONFIG).is_file():
            return cand.resolve()
    raise SpecError(f"{key}: {run_or_model_dir!r} holds no exported ftray model "
                    f"(expected {EXPORT_CONFIG} in it or in its model/ folder)")


def load_exported(model_dir: str) -> FtModel:
    """Load an exported ftray model for inference or further training."""
    d = exported_model_dir(model_dir, "model")
    cfg = json.loads((d / EXPORT_CONFIG).read_text())
    return MODELS[cfg["builder"]].load(d)


__all__ = ["FtModel", "ModelInfo", "MODELS", "build_model", "check_model_source", "exported_model_dir",
           "load_exported"]
