"""`hf`: a Hugging Face transformers model through the Auto classes (sequence classification,
regression, or causal LM), from a local folder, a folder inside an installed package, or a hub id."""

from __future__ import annotations

import copy
import gc
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ftray.models.base import EXPORT_CONFIG, FtModel, ModelInfo
from ftray.schema import SpecError

ADAPTER_DIR = "adapter"  # under LoRA, the adapter alone inside an export folder
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                "hidden_dropout", "attention_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")


def resolve_source(spec) -> str:
    """Where the weights come from: `init_from`'s exported model, a local folder, or a hub id."""
    if spec.model.init_from:
        from ftray.models import exported_model_dir
        return str(exported_model_dir(spec.model.init_from, "model.init_from"))
    return resolve_path(spec.model.path, "model.path")


def resolve_path(path: str, key: str) -> str:
    """A `package:NAME/SUBDIR` folder, a local folder, or a hub id; SpecError naming `key`."""
    if path.startswith("package:"):
        pkg, _, sub = path.removeprefix("package:").partition("/")
        found = importlib.util.find_spec(pkg) if pkg else None
        if found is None or not found.submodule_search_locations:
            raise SpecError(f"{key}: {path!r}: no installed Python package {pkg!r}")
        folder = Path(list(found.submodule_search_locations)[0]) / sub
        if not folder.is_dir():
            raise SpecError(f"{key}: {path!r}: package {pkg!r} has no folder {sub!r}")
        return str(folder)
    local = Path(path).expanduser()
    if local.exists() or path.startswith((".", "/", "~")):
        if not local.is_dir():
            raise SpecError(f"{key}: {path!r}: no such model folder")
        return str(local.resolve())
    return path  # a hub id


@lru_cache(maxsize=4)
def load_tokenizer(source: str):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:  # decoder models often ship without one
        tok.pad_token = tok.eos_token
    return tok


def _checked_model_type(spec, source: str) -> str:
    """The model type of `source` (or of `model.config`), after checking that its config and
    tokenizer load. A local folder is read without transformers' model classes: its config.json as
    JSON, its model type against transformers' list of known types, and a tokenizer.json through the
    tokenizers library (the fast tokenizer transformers itself loads). `AutoConfig` would import
    transformers' integrations (accelerate and its trackers): seconds of the driver's start,
    before Ray starts, for a check that needs a config file. A hub id, or a folder with another
    kind of tokenizer, goes through transformers' own loaders."""
    folder = Path(source)
    if spec.model.config or (folder / "config.json").is_file():
        config = spec.model.config or json.loads((folder / "config.json").read_text())
        model_type = config.get("model_type")
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
        if model_type not in CONFIG_MAPPING_NAMES:
            raise ValueError(f"model_type {model_type!r} is not a model type transformers knows")
        if (folder / "tokenizer.json").is_file():
            import tokenizers
            tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        else:
            load_tokenizer(source)
        return model_type
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(source)
    load_tokenizer(source)
    return config.model_type


def check_liger(model_type: str) -> None:
    """SpecError unless Liger is installed and has kernels for `model_type`."""
    if importlib.util.find_spec("liger_kernel") is None:
        raise SpecError("model.kernels: liger needs the liger-kernel package (pip install liger-kernel)")
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise SpecError(f"model.kernels: liger has no kernels for model type {model_type!r} (it has "
                        f"{', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}); use model.kernels: default")


def apply_liger(hf_model: nn.Module) -> None:
    """Swap in Liger's kernels for the norms, rotary embeddings and gated MLP, in place: the
    parameters (and so checkpoints and exports) stay the same. The loss stays ftray's own (no fused
    linear cross-entropy), so every method and metric sees the logits as before."""
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance
    _apply_liger_kernel_to_instance(model=hf_model, rope=True, rms_norm=True, swiglu=True, geglu=True,
                                    layer_norm=True, cross_entropy=False, fused_linear_cross_entropy=False)


def merged(peft_model: nn.Module) -> nn.Module:
    """A copy of a peft model with its adapters merged into the base weights (the live model is
    untouched). A 4-bit NF4 base is dequantized first and the merged model is bf16 throughout:
    each merged weight is rounded to bf16 once, after the fp32 sum of base and update."""
    from ftray.models.quantize import STORAGE_DTYPE, dense_copy, is_quantized
    if not is_quantized(peft_model):
        return copy.deepcopy(peft_model).merge_and_unload()
    return dense_copy(peft_model).merge_and_unload().to(STORAGE_DTYPE)


class HFClassifier(FtModel):
    # Under LoRA: whether `export` writes the merged model beside the adapter (`method.export`).
    merge_on_export: bool = True

    def __init__(self, hf_model: nn.Module, info: ModelInfo, source: str):
        super().__init__()
        self.hf, self.info, self.source = hf_model, info, source
        self.chat_template: str | None = None  # the built-in template it is tuned with, if any
        self.fused_loss = None  # `model.fused_loss`: Liger's fused linear cross-entropy (`build`)

    def forward(self, batch: dict) -> torch.Tensor:
        if self.fused_loss is not None and self.training:
            return self._fused_lm_loss(batch)
        logits = self.hf(**self._inputs(batch)).logits
        return logits.squeeze(-1) if self.info.task == "regression" else logits

    @staticmethod
    def _inputs(batch: dict) -> dict:
        """The transformers inputs of a batch. Padded rows (padded to max_length) are cut to their
        longest row. Packed language-model rows (`ftray.packing`, no attention mask) keep examples
        apart: with `position_ids` restarting at each example and no attention mask, transformers
        builds the block-diagonal causal mask itself (sdpa, eager, flex) or passes the boundaries
        to flash-attention's varlen kernel. It does so only without a cache: `use_cache` (on by
        default in most configs) would make it skip packed-sequence detection and let attention
        cross examples."""
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        if mask is None:
            return {"input_ids": ids, "position_ids": batch["position_ids"], "use_cache": False}
        width = int(mask.sum(dim=1).max())
        return {"input_ids": ids[:, :width], "attention_mask": mask[:, :width]}

    def _fused_lm_loss(self, batch: dict) -> torch.Tensor:
        """The mean next-token loss over the labels (as `task_loss`), the output head's product and
        the cross-entropy fused chunk by chunk: no tokens x vocabulary logits are held."""
        inputs = self._inputs(batch)
        labels = batch["labels"][:, :inputs["input_ids"].shape[1]]
        hidden = self._base()(**inputs).last_hidden_state[:, :-1]
        head = self._plain().get_output_embeddings().weight
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
            else head.dtype  # the head's product in the autocast dtype, as the unfused path runs it
        return self.fused_loss(head.to(dtype), hidden.reshape(-1, hidden.shape[-1]).to(dtype),
                               labels[:, 1:].reshape(-1))

    def _plain(self) -> nn.Module:
        """The transformers model, under a peft wrapper if there is one."""
        return self.hf.get_base_model() if hasattr(self.hf, "get_base_model") else self.hf

    def _base(self) -> nn.Module:
        return self._plain().base_model

    def blocks(self):
        lists = [m for m in self._base().modules() if isinstance(m, nn.ModuleList)]
        return list(max(lists, key=len)) if lists else []

    def head(self):
        base = self._base()
        return nn.ModuleList([m for m in self._plain().children() if m is not base])

    def new_head(self):
        for m in self.head().modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    # -------------------------------------------------------------------------------- building
    @staticmethod
    def _config(source: str, info: ModelInfo, dropout=None, random_config: dict | None = None):
        """The transformers config: the source's (or one built from `random_config`), with the
        dropout override and a head sized for the task."""
        from transformers import AutoConfig
        config = AutoConfig.for_model(**random_config) if random_config else AutoConfig.from_pretrained(source)
        for key in DROPOUT_KEYS:
            if dropout is not None and hasattr(config, key):
                setattr(config, key, dropout)
        if info.task != "causal_lm":
            config.num_labels = info.num_outputs
            config.id2label = {i: str(c) for i, c in enumerate(info.classes)} or {0: "value"}
            config.label2id = {v: k for k, v in config.id2label.items()}
            config.problem_type = ("single_label_classification" if info.task == "classification"
                                   else "regression")
        return config

    @staticmethod
    def _auto(task: str):
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
        return AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification

    @classmethod
    def _from_pretrained(cls, source: str, info: ModelInfo, dropout, new_head: bool,
                         random_config: dict | None = None, attention: str = "auto") -> "HFClassifier":
        config = cls._config(source, info, dropout, random_config)
        auto = cls._auto(info.task)
        extra = {} if attention == "auto" else {"attn_implementation": attention}
        if random_config:
            return cls(auto.from_config(config, dtype=torch.float32, **extra), info, source)
        if info.task != "causal_lm":
            extra["ignore_mismatched_sizes"] = new_head
        return cls(auto.from_pretrained(source, config=config, dtype=torch.float32, **extra), info, source)

    @classmethod
    def skeleton(cls, spec, info) -> "HFClassifier":
        """The model's structure without its weights (on the meta device): cheap module names."""
        source = resolve_source(spec)
        config = cls._config(source, info, random_config=spec.model.config)
        with torch.device("meta"):
            return cls(cls._auto(info.task).from_config(config), info, source)

    @classmethod
    def build(cls, spec, info):
        new_head = spec.method.replaces_head
        model = cls._from_pretrained(resolve_source(spec), info, spec.model.dropout, new_head,
                                     random_config=spec.model.config, attention=spec.model.attention)
        if new_head:
            model.new_head()
        if spec.data and spec.data.chat_template != "tokenizer":
            from ftray.chat import TEMPLATES
            model.chat_template = TEMPLATES[spec.data.chat_template]
        if spec.model.kernels == "liger":
            apply_liger(model.hf)
        if spec.model.fused_loss:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
            model.fused_loss = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)
        if spec.model.gradient_checkpointing:
            model.hf.gradient_checkpointing_enable()
        return model

    @classmethod
    def check_source(cls, spec, info):
        source = resolve_source(spec)
        key = "model.init_from" if spec.model.init_from else "model.path"
        try:
            model_type = _checked_model_type(spec, source)
        except Exception as e:  # noqa: BLE001 - any failure here means the source is unusable
            raise SpecError(f"{key}: cannot load a model from {source!r}: {e}".splitlines()[0]) from None
        if spec.model.kernels == "liger":
            check_liger(model_type)

    # -------------------------------------------------------------------------------- export
    def export(self, out_dir: Path) -> None:
        """save_pretrained + tokenizer; under LoRA, the adapter alone in `adapter/` and (unless
        `merge_on_export` is off: `method.export: adapter`) the merged model beside it, so that the
        export loads like any other model."""
        out_dir.mkdir(parents=True, exist_ok=True)
        tok = load_tokenizer(self.source)
        if self.chat_template:  # every export renders chats as the model was tuned on them
            tok = copy.deepcopy(tok)
            tok.chat_template = self.chat_template
        hf = self.hf
        if hasattr(hf, "merge_and_unload"):
            hf.save_pretrained(str(out_dir / ADAPTER_DIR))
            if not self.merge_on_export:
                tok.save_pretrained(str(out_dir / ADAPTER_DIR))
                return
            hf = merged(hf)
        hf.save_pretrained(str(out_dir), safe_serialization=True)
        tok.save_pretrained(str(out_dir))
        (out_dir / EXPORT_CONFIG).write_text(json.dumps({"builder": "hf", "info": self.info.to_dict()},
                                                        indent=2))
        if hf is not self.hf:
            # The merged copy is a whole model; its reference cycles would keep it (on the GPU) until
            # the next cyclic collection, seen as a second epoch peaking ~12 GiB higher on the 8B shape.
            del hf
            gc.collect()

    @classmethod
    def load(cls, model_dir: Path) -> "HFClassifier":
        cfg = json.loads((model_dir / EXPORT_CONFIG).read_text())
        return cls._from_pretrained(str(model_dir), ModelInfo(**cfg["info"]), None, new_head=False)
