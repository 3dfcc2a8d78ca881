"""`mlp`: a multilayer perceptron over numeric features, built from the structure hyperparameters."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ftray.models.base import EXPORT_CONFIG, FtModel, ModelInfo, param_mismatch
from ftray.schema import SpecError
from ftray.spec.model import MLPModel

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "selu": nn.SELU,
               "mish": nn.Mish}
WEIGHTS = "model.safetensors"


class MLP(FtModel):
    def __init__(self, structure: MLPModel, info: ModelInfo):
        super().__init__()
        self.structure, self.info = structure, info
        width, blocks = info.in_features, []
        for _ in range(structure.layers):
            blocks.append(nn.Sequential(nn.Linear(width, structure.units),
                                        ACTIVATIONS[structure.activation](),
                                        nn.Dropout(structure.dropout)))
            width = structure.units
        self.backbone = nn.ModuleList(blocks)
        self.classifier = nn.Linear(width, info.num_outputs)
        # Not persistent: the weights stay those of an unscaled mlp (init_from, older exports);
        # the values travel in `info`, which every export and checkpoint writes.
        self.register_buffer("shift", torch.tensor(info.feature_shift, dtype=torch.float32), persistent=False)
        self.register_buffer("scale", torch.tensor(info.feature_scale, dtype=torch.float32), persistent=False)

    def forward(self, batch: dict) -> torch.Tensor:
        x = batch["x"]
        if self.scale.numel():  # data.normalize
            x = (x - self.shift) / self.scale
        for block in self.backbone:
            x = block(x)
        out = self.classifier(x)
        return out.squeeze(-1) if self.info.task == "regression" else out

    def blocks(self):
        return list(self.backbone)

    def head(self):
        return self.classifier

    def new_head(self):
        self.classifier.reset_parameters()

    # -------------------------------------------------------------------------------- building
    @classmethod
    def build(cls, spec, info):
        model = cls(spec.model, info)
        if spec.model.init_from:
            model.load_pretrained(_pretrained_file(spec), skip_head=_skips_head(spec))
        return model

    @classmethod
    def check_source(cls, spec, info):
        if not spec.model.init_from:
            return
        path = _pretrained_file(spec)
        try:
            with safe_open(str(path), "pt") as f:
                saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except (SafetensorError, OSError) as e:  # e.g. an export without model.safetensors
            raise SpecError(f"model.init_from: {path}: cannot read the mlp weights ({e})") from None
        mismatch = _mismatch(cls(spec.model, info), saved, _skips_head(spec))
        if mismatch:
            raise SpecError(f"model.init_from: {spec.model.init_from}: {mismatch}")

    def load_pretrained(self, path: Path, skip_head: bool) -> None:
        saved = load_file(str(path))
        mismatch = _mismatch(self, {k: tuple(v.shape) for k, v in saved.items()}, skip_head)
        if mismatch:
            raise SpecError(f"model.init_from: {path}: {mismatch}")
        if skip_head:
            saved = {k: v for k, v in saved.items() if not k.startswith("classifier.")}
        self.load_state_dict(saved, strict=not skip_head)

    # -------------------------------------------------------------------------------- export
    def export(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out_dir / WEIGHTS))
        (out_dir / EXPORT_CONFIG).write_text(json.dumps(
            {"builder": "mlp", "structure": self.structure.model_dump(), "info": self.info.to_dict()},
            indent=2))

    @classmethod
    def load(cls, model_dir: Path) -> "MLP":
        cfg = json.loads((model_dir / EXPORT_CONFIG).read_text())
        structure = MLPModel.model_validate({**cfg["structure"], "init_from": None})
        model = cls(structure, ModelInfo(**cfg["info"]))
        model.load_state_dict(load_file(str(model_dir / WEIGHTS)))
        return model


def _skips_head(spec) -> bool:
    return spec.method.replaces_head


def _pretrained_file(spec) -> Path:
    from ftray.models import exported_model_dir  # the registry imports this module
    d = exported_model_dir(spec.model.init_from, "model.init_from")
    cfg = json.loads((d / EXPORT_CONFIG).read_text())
    if cfg.get("builder") != "mlp":
        raise SpecError(f"model.init_from: {spec.model.init_from} is a {cfg.get('builder')!r} model, "
                        "not an mlp")
    return d / WEIGHTS


def _mismatch(model: nn.Module, saved: dict[str, tuple], skip_head: bool) -> str:
    """Describe missing, unexpected and differently shaped parameters ('' when they match)."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if skip_head:
        want = {k: v for k, v in want.items() if not k.startswith("classifier.")}
        saved = {k: v for k, v in saved.items() if not k.startswith("classifier.")}
    text = param_mismatch(want, saved)
    differs = {k for k in set(want) ^ set(saved)} | {k for k in set(want) & set(saved) if want[k] != saved[k]}
    if any(k.startswith("classifier.") for k in differs):
        text += "; (the head differs: use method.name: transfer with new_head: true)"
    return text
