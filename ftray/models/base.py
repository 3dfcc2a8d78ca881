"""What every model builder provides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

EXPORT_CONFIG = "ftray_model.json"


def param_mismatch(want: dict[str, tuple], saved: dict[str, tuple]) -> str:
    """Missing, unexpected and differently shaped parameters, by name ('' when names and shapes
    match): the one check that a saved start fits the model a spec builds (mlp starts, RL policies)."""
    missing, unexpected = sorted(set(want) - set(saved)), sorted(set(saved) - set(want))
    shapes = [f"{k} {saved[k]} != {want[k]}" for k in sorted(set(want) & set(saved)) if saved[k] != want[k]]
    parts = [f"missing {missing}"] * bool(missing) + [f"unexpected {unexpected}"] * bool(unexpected)
    if shapes:
        parts.append(f"shape mismatch: saved vs this spec: {shapes}")
    return "; ".join(parts)


@dataclass
class ModelInfo:
    """Facts about the data that shape the model, found by `ftray.data.inspect` before Ray starts."""
    task: str
    in_features: int = 0
    classes: list = field(default_factory=list)  # label values in head order (classification)
    image_shape: list = field(default_factory=list)  # (channels, height, width) of a multimodal image
    # data.normalize, fitted on the training rows: the model computes (x - shift) / scale per
    # feature value (empty: no scaling). Kept here so every export and checkpoint carries it.
    feature_shift: list = field(default_factory=list)
    feature_scale: list = field(default_factory=list)

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    def to_dict(self) -> dict:
        return asdict(self)


class FtModel(nn.Module):
    """A model ftray trains: `forward(batch) -> logits`, plus what methods and export need."""

    info: ModelInfo

    @classmethod
    def build(cls, spec, info: ModelInfo) -> "FtModel":
        raise NotImplementedError

    @classmethod
    def check_source(cls, spec, info: ModelInfo) -> None:
        """Raise SpecError if the weights the spec names cannot be loaded into this model."""

    @classmethod
    def load(cls, model_dir: Path) -> "FtModel":
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """Backbone blocks, bottom to top (what `transfer.unfreeze_last` counts)."""
        raise NotImplementedError

    def head(self) -> nn.Module:
        """The task head: the part that maps backbone features to outputs."""
        raise NotImplementedError

    def frozen_parts(self) -> list[nn.Module]:
        """Parts the model spec itself keeps frozen under every method (multimodal `freeze`)."""
        return []

    def new_head(self) -> None:
        """Replace the head by a freshly initialised one of the same shape."""
        raise NotImplementedError

    def export(self, out_dir: Path) -> None:
        """Write weights (safetensors) and config so that `load` rebuilds this model."""
        raise NotImplementedError
