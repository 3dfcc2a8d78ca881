"""Model builders chosen by name in `model.name`.

Every builder returns an `FtModel`: a torch module that maps a batch dict to logits (or
predictions), names its backbone blocks and head (what `transfer` freezes and replaces), and
exports itself to a folder that `model.init_from` and `load_exported` read back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ftray.models.base import EXPORT_CONFIG, FtModel, ModelInfo
from ftray.models.ensemble import Ensemble
from ftray.models.hf import ADAPTER_DIR, HFClassifier
from ftray.models.mlp import MLP
from ftray.models.multimodal import Multimodal
from ftray.schema import SpecError

if TYPE_CHECKING:
    from ftray.spec.job import JobSpec

MODELS: dict[str, type[FtModel]] = {"mlp": MLP, "hf": HFClassifier, "multimodal": Multimodal,
                                    "ensemble": Ensemble}


def build_model(spec: JobSpec, info: ModelInfo) -> FtModel:
    """Build the spec's model for data described by `info`, with pretrained weights if it has any."""
    return MODELS[spec.model.name].build(spec, info)


def check_model_source(spec: JobSpec, info: ModelInfo) -> None:
    """Fail with SpecError (before Ray starts) when the model or its starting weights can't load."""
    MODELS[spec.model.name].check_source(spec, info)


def exported_model_dir(run_or_model_dir: str, key: str) -> Path:
    """The exported model folder of an earlier run (given its run folder or the model folder).

    Raises SpecError naming `key` unless the folder holds a readable export: a JSON config naming a
    known builder, and safetensors weights whose headers parse. These checks cost milliseconds and
    run before Ray starts, so a corrupt or truncated export is exit 2 here rather than a failure
    in every worker."""
    p = Path(run_or_model_dir).expanduser()
    for cand in (p / "model", p):
        if (cand / EXPORT_CONFIG).is_file():
            d = cand.resolve()
            if export_config(d, key)["builder"] != "ensemble":  # an ensemble's weights are its members'
                _check_weights(d, key)
            return d
        if (cand / ADAPTER_DIR / "adapter_config.json").is_file():
            raise SpecError(f"{key}: {run_or_model_dir!r} holds only a LoRA adapter (a run with method.export: "
                            "adapter): continue it with method.adapter_from, or load it with peft on its base")
    raise SpecError(f"{key}: {run_or_model_dir!r} holds no exported ftray model "
                    f"(expected {EXPORT_CONFIG} in it or in its model/ folder)")


def export_config(model_dir: Path, key: str) -> dict:
    """The parsed `ftray_model.json` of an export folder; SpecError naming `key` if it is unusable."""
    path = model_dir / EXPORT_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError covers bad JSON and bad UTF-8
        raise SpecError(f"{key}: {path}: not a readable JSON file ({e})") from None
    # What the loaders would otherwise trip over later, in a worker.
    if not isinstance(cfg, dict) or not isinstance(cfg.get("builder"), str) or cfg["builder"] not in MODELS:
        raise SpecError(f"{key}: {path}: not an ftray model config (\"builder\" must be one of {sorted(MODELS)})")
    try:
        ModelInfo(**cfg["info"])
    except (TypeError, KeyError) as e:
        raise SpecError(f"{key}: {path}: not an ftray model config (\"info\": {e})") from None
    return cfg


def _check_weights(model_dir: Path, key: str) -> None:
    """Every export ftray writes has safetensors weights (never pickles): their headers must parse."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise SpecError(f"{key}: {model_dir}: no *.safetensors weights (ftray loads safetensors only)")
    for f in files:
        try:
            with safe_open(str(f), "pt") as st:
                for name in st.keys():
                    st.get_slice(name).get_shape()
        except (SafetensorError, OSError) as e:
            raise SpecError(f"{key}: {f}: unreadable safetensors file ({e})") from None


def load_exported(model_dir: str) -> FtModel:
    """Load an exported ftray model for inference or further training."""
    d = exported_model_dir(model_dir, "model")
    return MODELS[export_config(d, "model")["builder"]].load(d)


__all__ = ["FtModel", "ModelInfo", "MODELS", "build_model", "check_model_source", "export_config",
           "exported_model_dir", "load_exported"]
