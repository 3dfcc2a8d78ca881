"""`model:`: what to fine-tune, one builder by name (mlp, hf, multimodal)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from ftray.schema import Strict, describe

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu", "selu", "mish"]


class MLPModel(Strict):
    name: Literal["mlp"] = describe("Model builder: a multilayer perceptron over numeric features.", "mlp")
    layers: int = describe("Number of hidden layers (0 = a linear model).", 2, ge=0, le=64)
    units: int = describe("Units in each hidden layer.", 128, ge=1, le=65536)
    activation: Activation = describe("Activation after each hidden layer.", "relu")
    dropout: float = describe("Dropout probability after each hidden layer.", 0.0, ge=0.0, lt=1.0)
    init_from: str | None = describe(
        "Start from the exported model of an earlier ftray run (its run folder).", None)


class HFModel(Strict):
    name: Literal["hf"] = describe("Model builder: a Hugging Face transformers model (Auto classes).", "hf")
    path: str | None = describe(
        "Local folder, `package:NAME/SUBDIR` inside an installed Python package, or hub id.", None)
    max_length: int = describe("Tokens per example after truncation.", 128, ge=8, le=131072)
    dropout: float | None = describe(
        "Override the model's hidden and attention dropout (None keeps the config's).", None, ge=0.0, lt=1.0)
    init_from: str | None = describe(
        "Start from the exported model of an earlier ftray run (its run folder) instead of `path`.", None)
    gradient_checkpointing: bool = describe("Recompute activations in the backward pass to save memory.",
                                            False)
    kernels: Literal["default", "liger"] = describe(
        "`liger`: Liger's fused Triton kernels for RMSNorm, rotary embeddings and the gated MLP, on GPUs, "
        "for the decoder families Liger supports (Llama, Mistral, Qwen, Gemma, ...); needs "
        "`pip install liger-kernel`. `default`: transformers' own layers.", "default")
    fused_loss: bool = describe(
        "`causal_lm` with `kernels: liger`, methods full, lora and attention: compute the training loss "
        "with Liger's fused linear cross-entropy, chunk by chunk, so the logits (tokens x vocabulary) "
        "are never held (Llama-3-8B, 2 x 4096 tokens: 15 GiB less peak memory, 1.4% faster on an "
        "H200). Same loss; validation computes logits as before.", False)
    attention: Literal["auto", "sdpa", "eager", "flex_attention"] = describe(
        "transformers' attention implementation: `auto` (its default, sdpa where the model has it), "
        "`sdpa`, `eager`, or `flex_attention` (compiled block-sparse kernels on GPUs: packed rows skip "
        "the blocks between examples).", "auto")
    config: dict[str, Any] | None = describe(
        "Build with random weights from this transformers config (with `model_type`); `path` then only "
        "supplies the tokenizer.", None)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.init_from is None):
            raise ValueError("give exactly one of `path` and `init_from`")
        return self


Modality = Literal["image", "text", "tabular"]


class ImageEncoder(Strict):
    channels: list[int] = describe(
        "Output channels of each conv layer (3x3 conv, ReLU, 2x2 max-pool) of the image CNN.",
        default_factory=lambda: [16, 32], min_length=1, max_length=8)


class TextEncoder(Strict):
    kind: Literal["bag", "hf"] = describe(
        "`bag`: a mean of learned embeddings of hashed words; `hf`: a transformers encoder, mean-pooled.",
        "bag")
    path: str | None = describe("`hf`: local folder, `package:NAME/SUBDIR` or hub id of the encoder.", None,
                                validate_default=True)
    max_length: int = describe("Words (`bag`) or tokens (`hf`) per example after truncation.", 32,
                               ge=1, le=4096)
    buckets: int = describe("`bag`: hash buckets words fall into (the embedding table's rows).", 4096,
                            ge=2, le=1 << 22)
    embed_dim: int = describe("`bag`: width of a word embedding.", 64, ge=1, le=4096)

    @field_validator("path")
    @classmethod
    def _path_for_hf_only(cls, path, info):
        if (info.data.get("kind") == "hf") != (path is not None):
            raise ValueError("give a path exactly when kind is hf")
        return path


class TabularEncoder(Strict):
    layers: int = describe("Hidden layers of the MLP over `data.features`.", 1, ge=0, le=16)
    units: int = describe("Units in each hidden layer.", 64, ge=1, le=65536)


class MultimodalModel(Strict):
    name: Literal["multimodal"] = describe(
        "Model builder: one encoder per modality (image CNN, text, tabular MLP), a fusion and a head.",
        "multimodal")
    modalities: list[Modality] = describe(
        "Encoders the model has, each reading its data column (`data.image`, `data.text`, "
        "`data.features`); drop one for an ablation.", default_factory=lambda: ["image", "text"], min_length=1)
    image: ImageEncoder = describe("The image encoder.", default_factory=ImageEncoder)
    text: TextEncoder = describe("The text encoder.", default_factory=TextEncoder)
    tabular: TabularEncoder = describe("The tabular encoder.", default_factory=TabularEncoder)
    dim: int = describe("Width every encoder projects its features to (the fusion's input).", 64,
                        ge=1, le=65536)
    fusion: Literal["concat", "gated", "attention"] = describe(
        "How encodings combine: concatenation, a learned sigmoid gate per modality (weighted sum), or "
        "attention across the modality tokens (mean-pooled).", "concat")
    head_units: int = describe("Hidden units of the head after the fusion (0 = a linear head).", 64,
                               ge=0, le=65536)
    dropout: float = describe("Dropout before each layer of the head.", 0.0, ge=0.0, lt=1.0)
    freeze: list[Modality] = describe(
        "Encoders whose bodies stay fixed (and run in eval mode) under every method; their projections "
        "to `dim` still train.", default_factory=list)
    init_from: str | None = describe(
        "Start from the exported multimodal model of an earlier ftray run (its run folder).", None)

    @field_validator("modalities")
    @classmethod
    def _each_once(cls, modalities):
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"{modalities} names a modality twice")
        return modalities

    @field_validator("freeze")
    @classmethod
    def _frozen_ones_exist(cls, freeze, info):
        have = info.data.get("modalities", [])
        extra = [m for m in freeze if m not in have]
        if extra:
            raise ValueError(f"{extra} not among the model's modalities {have}")
        return freeze


ModelSpec = Annotated[Union[MLPModel, HFModel, MultimodalModel], Field(discriminator="name")]
