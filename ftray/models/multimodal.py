"""`multimodal`: one encoder per modality (image CNN, text, tabular MLP), a fusion and a head.

Every encoder is a `body` (the part `model.freeze` fixes; for `text.kind: hf` the pretrained
transformers encoder) and a `proj` to `model.dim` features (always trains, so a frozen pretrained
body still gets a learned adapter). The fusion combines the modalities listed in
`model.modalities`; dropping one from that list gives the same model without that encoder, which
is how the single-modality ablations of `jobs/multimodal.yaml` are run with the same code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ftray.models.base import EXPORT_CONFIG, FtModel, ModelInfo
from ftray.schema import SpecError
from ftray.spec.model import ImageEncoder, MultimodalModel, TabularEncoder, TextEncoder

WEIGHTS = "model.safetensors"
TEXT_ENCODER_DIR = "text_encoder"  # the hf text encoder's config + tokenizer inside an export


def text_source(spec) -> str | None:
    """The resolved folder or hub id of an hf text encoder (None for a bag or no text)."""
    model = spec.model
    if "text" not in model.modalities or model.text.kind != "hf":
        return None
    from ftray.models.hf import resolve_path
    return resolve_path(model.text.path, "model.text.path")


class ImageCNN(nn.Module):
    """3x3 conv, ReLU, 2x2 max-pool per layer (ceil mode: small images never shrink to 0)."""

    def __init__(self, spec: ImageEncoder, shape: list[int], dim: int):
        super().__init__()
        (c, h, w), layers = shape, []
        for out in spec.channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            c, h, w = out, -(-h // 2), -(-w // 2)
        self.body = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, dim), nn.ReLU())

    def forward(self, batch: dict) -> torch.Tensor:
        return self.proj(self.body(batch["image"]))


class WordBag(nn.Module):
    """Mean of learned embeddings of the hashed words (`ftray.data.hashed_words`; id 0 pads)."""

    def __init__(self, spec: TextEncoder, dim: int):
        super().__init__()
        self.body = nn.EmbeddingBag(spec.buckets, spec.embed_dim, mode="mean", padding_idx=0)
        self.proj = nn.Sequential(nn.Linear(spec.embed_dim, dim), nn.ReLU())

    def forward(self, batch: dict) -> torch.Tensor:
        return self.proj(self.body(batch["words"]))


class HFText(nn.Module):
    """A transformers encoder (AutoModel), mean-pooled over the real tokens."""

    def __init__(self, encoder: nn.Module, dim: int):
        super().__init__()
        self.body = encoder
        self.proj = nn.Sequential(nn.Linear(encoder.config.hidden_size, dim), nn.ReLU())

    def forward(self, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        width = int(mask.sum(dim=1).max())  # rows are padded to max_length: cut the common padding
        mask = mask[:, :width]
        hidden = self.body(input_ids=batch["input_ids"][:, :width], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return self.proj((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0))


class TabularMLP(nn.Module):
    def __init__(self, spec: TabularEncoder, in_features: int, dim: int):
        super().__init__()
        width, layers = in_features, []
        for _ in range(spec.layers):
            layers += [nn.Linear(width, spec.units), nn.ReLU()]
            width = spec.units
        self.body = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Linear(width, dim), nn.ReLU())

    def forward(self, batch: dict) -> torch.Tensor:
        return self.proj(self.body(batch["x"]))


class Fusion(nn.Module):
    """Combines the modalities' (batch, dim) encodings into one vector of `out_features`."""

    def __init__(self, kind: str, modalities: int, dim: int):
        super().__init__()
        self.kind = kind
        self.out_features = modalities * dim if kind == "concat" else dim
        if kind == "gated":  # one sigmoid gate per modality, from all of them
            self.gate = nn.Linear(modalities * dim, modalities)
        elif kind == "attention":  # every modality token attends to all of them
            self.attention = nn.MultiheadAttention(dim, num_heads=4 if dim % 4 == 0 else 1, batch_first=True)
            self.norm = nn.LayerNorm(dim)

    def forward(self, encodings: list[torch.Tensor]) -> torch.Tensor:
        if self.kind == "concat":
            return torch.cat(encodings, dim=-1)
        if self.kind == "gated":
            gates = torch.sigmoid(self.gate(torch.cat(encodings, dim=-1)))
            return sum(gates[:, i:i + 1] * e for i, e in enumerate(encodings))
        tokens = torch.stack(encodings, dim=1)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.norm(tokens + attended).mean(dim=1)


class Multimodal(FtModel):
    def __init__(self, structure: MultimodalModel, info: ModelInfo, hf_encoder: nn.Module | None = None):
        super().__init__()
        self.structure, self.info = structure, info
        self.encoders = nn.ModuleDict({m: self._encoder(m, hf_encoder) for m in structure.modalities})
        self.fusion = Fusion(structure.fusion, len(structure.modalities), structure.dim)
        width, head, p = self.fusion.out_features, [], structure.dropout
        if structure.head_units:
            head += [nn.Dropout(p), nn.Linear(width, structure.head_units), nn.ReLU()]
            width = structure.head_units
        self.classifier = nn.Sequential(*head, nn.Dropout(p), nn.Linear(width, info.num_outputs))

    def _encoder(self, modality: str, hf_encoder: nn.Module | None) -> nn.Module:
        s = self.structure
        if modality == "image":
            return ImageCNN(s.image, self.info.image_shape, s.dim)
        if modality == "tabular":
            return TabularMLP(s.tabular, self.info.in_features, s.dim)
        return HFText(hf_encoder, s.dim) if s.text.kind == "hf" else WordBag(s.text, s.dim)

    def forward(self, batch: dict) -> torch.Tensor:
        fused = self.fusion([self.encoders[m](batch) for m in self.structure.modalities])
        out = self.classifier(fused)
        return out.squeeze(-1) if self.info.task == "regression" else out

    def blocks(self):
        return [*self.encoders.values(), self.fusion]

    def head(self):
        return self.classifier

    def new_head(self):
        for m in self.classifier.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def frozen_parts(self):
        return [self.encoders[m].body for m in self.structure.freeze]

    # -------------------------------------------------------------------------------- building
    @classmethod
    def build(cls, spec, info):
        if spec.model.init_from:  # every weight, the hf encoder's too, comes from the earlier run
            d = _pretrained_dir(spec)
            model = cls(spec.model, info, _hf_from_export(d, spec.model))
            saved = load_file(str(d / WEIGHTS))
            skip_head = spec.method.replaces_head
            if skip_head:
                saved = {k: v for k, v in saved.items() if not k.startswith("classifier.")}
            model.load_state_dict(saved, strict=not skip_head)
            return model
        source = text_source(spec)
        hf_encoder = None
        if source:
            from transformers import AutoModel
            hf_encoder = AutoModel.from_pretrained(source, dtype=torch.float32)
        return cls(spec.model, info, hf_encoder)

    @classmethod
    def check_source(cls, spec, info):
        if spec.model.init_from:
            from ftray.models.mlp import _mismatch
            d = _pretrained_dir(spec)
            with safe_open(str(d / WEIGHTS), "pt") as f:
                saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            with torch.device("meta"):  # the structure only: no weights allocated or loaded
                model = cls(spec.model, info, _hf_from_export(d, spec.model))
            mismatch = _mismatch(model, saved, spec.method.replaces_head)
            if mismatch:
                raise SpecError(f"model.init_from: {spec.model.init_from}: {mismatch}")
            return
        source = text_source(spec)
        if not source:
            return
        from ftray.models.hf import load_tokenizer
        try:
            from transformers import AutoConfig
            AutoConfig.from_pretrained(source)
            load_tokenizer(source)
        except Exception as e:  # noqa: BLE001 - any failure here means the source is unusable
            raise SpecError(f"model.text.path: cannot load a text encoder from {source!r}: {e}"
                            .splitlines()[0]) from None

    # -------------------------------------------------------------------------------- export
    def export(self, out_dir: Path) -> None:
        """Weights (safetensors) and config; with an hf text encoder also its transformers config
        and tokenizer in `text_encoder/`, so the export loads without the original source."""
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(out_dir / WEIGHTS))
        if "text" in self.encoders and isinstance(self.encoders["text"], HFText):
            from ftray.models.hf import load_tokenizer, resolve_path
            self.encoders["text"].body.config.save_pretrained(str(out_dir / TEXT_ENCODER_DIR))
            load_tokenizer(resolve_path(self.structure.text.path, "model.text.path")).save_pretrained(
                str(out_dir / TEXT_ENCODER_DIR))
        (out_dir / EXPORT_CONFIG).write_text(json.dumps(
            {"builder": "multimodal", "structure": self.structure.model_dump(mode="json"),
             "info": self.info.to_dict()}, indent=2))

    @classmethod
    def load(cls, model_dir: Path) -> "Multimodal":
        cfg = json.loads((model_dir / EXPORT_CONFIG).read_text())
        structure = MultimodalModel.model_validate({**cfg["structure"], "init_from": None})
        model = cls(structure, ModelInfo(**cfg["info"]), _hf_from_export(model_dir, structure))
        model.load_state_dict(load_file(str(model_dir / WEIGHTS)))
        return model


def _hf_from_export(model_dir: Path, structure: MultimodalModel) -> nn.Module | None:
    """An export's hf text encoder, built from its saved config (weights come with the rest)."""
    if "text" not in structure.modalities or structure.text.kind != "hf":
        return None
    if not (model_dir / TEXT_ENCODER_DIR).is_dir():
        raise SpecError(f"model.init_from: {model_dir} has no hf text encoder ({TEXT_ENCODER_DIR}/)")
    from transformers import AutoConfig, AutoModel
    return AutoModel.from_config(AutoConfig.from_pretrained(str(model_dir / TEXT_ENCODER_DIR)))


def _pretrained_dir(spec) -> Path:
    from ftray.models import export_config, exported_model_dir  # the registry imports this module
    d = exported_model_dir(spec.model.init_from, "model.init_from")
    builder = export_config(d, "model.init_from")["builder"]
    if builder != "multimodal":
        raise SpecError(f"model.init_from: {spec.model.init_from} is a {builder!r} model, not a multimodal one")
    return d
