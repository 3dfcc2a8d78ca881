"""The typed job spec: one YAML file says what to fine-tune, how, and where.

Every field has a one-line description (the README's spec reference is generated from them), the
YAML keys are the Python field names, and unknown keys are errors. `load_spec` is the only way in:
it reads YAML safely, applies `--set key.path=value` overrides to the raw mapping and validates the
result, so an override goes through exactly the same checks as the file.
"""

from __future__ import annotations

import copy
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_SPEC_BYTES = 1 << 20  # a job spec is a page of YAML; anything bigger is a mistake
# A spec nests a few levels; PyYAML's composer recurses per level, so a deeper document would end
# in a RecursionError (a traceback, not exit 2) long before it could mean anything.
MAX_SPEC_DEPTH = 64


class SpecError(Exception):
    """Bad input: printed as one message and exit status 2, before Ray starts."""


class Strict(BaseModel):
    # No field means anything at .inf or .nan (an infinite L1 penalty would train on NaN losses).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def describe(text: str, default: Any = ..., **kw) -> Any:
    return Field(default, description=text, **kw)


# ----------------------------------------------------------------------------------------- model
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
    config: dict[str, Any] | None = describe(
        "Build with random weights from this transformers config (with `model_type`); `path` then only "
        "supplies the tokenizer.", None)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.init_from is None):
            raise ValueError("give exactly one of `path` and `init_from`")
        return self


ModelSpec = Annotated[Union[MLPModel, HFModel], Field(discriminator="name")]


# ------------------------------------------------------------------------------------------ data
class DataSpec(Strict):
    path: str = describe("Training data: a Parquet, JSONL or CSV file or folder (local path or URI).")
    val_path: str | None = describe("Validation data in the same layout; None splits `path`.", None)
    val_fraction: float = describe("Share of `path` held out for validation when `val_path` is None.",
                                   0.2, gt=0.0, lt=1.0)
    format: Literal["auto", "parquet", "jsonl", "csv"] = describe(
        "File format; `auto` goes by the file extension.", "auto")
    task: Literal["classification", "regression", "causal_lm"] = describe(
        "What the labels are: class ids, real targets, or next tokens of `text`.", "classification")
    features: list[str] = describe(
        "Numeric input columns for `mlp` (one list-valued column or several scalar columns).",
        default_factory=list)
    text: str | None = describe("Text column for `hf` models.", None)
    prompt: str | None = describe("`causal_lm` instruction tuning: prompt column (no loss on its tokens).", None)
    response: str | None = describe("`causal_lm` instruction tuning: response column (the loss).", None)
    truncation: Literal["none", "right", "left"] = describe(
        "Examples longer than `model.max_length`: error (`none`), cut the end (`right`), or cut the "
        "start of the prompt (`left`).", "right")
    packing: bool = describe("`causal_lm`: pack several examples into each `model.max_length` sequence.",
                             False)
    label: str | None = describe("Label column (classification, regression).", "label")
    classes: list[str | int] | None = describe(
        "Label values in head order; None means integer labels 0..K-1 with K inferred.", None)
    shuffle_buffer: int = describe("Rows in each worker's seeded shuffle buffer (0 = no shuffle).",
                                   1024, ge=0)


# --------------------------------------------------------------------------------------- methods
class FullMethod(Strict):
    name: Literal["full"] = describe("Train every parameter of the model.", "full")


class TransferMethod(Strict):
    name: Literal["transfer"] = describe(
        "Freeze the backbone and train a head (and optionally the last blocks).", "transfer")
    new_head: bool = describe("Replace the head with a fresh one sized for this data's labels.", True)
    unfreeze_last: int = describe("Backbone blocks, counted from the top, that train too.", 0, ge=0)
    backbone_lr_scale: float = describe(
        "Learning rate of unfrozen backbone blocks as a multiple of `train.lr`.", 1.0, gt=0.0, le=1.0)


class LoraParams(Strict):
    r: int = describe("LoRA rank.", 8, ge=1, le=4096)
    alpha: float = describe("LoRA scaling numerator (the update is scaled by alpha / r).", 16.0, gt=0.0)
    dropout: float = describe("Dropout on the LoRA branch.", 0.0, ge=0.0, lt=1.0)


class LoraMethod(LoraParams):
    name: Literal["lora"] = describe("Low-rank adapters through peft; the base weights stay frozen.", "lora")
    target_modules: Union[Literal["attention", "mlp", "all-linear"], list[str]] = describe(
        "Modules that get adapters: a preset, or module names (suffixes such as `query`, `q_proj`).",
        "attention")
    adapter_from: str | None = describe(
        "Continue the adapter of an earlier lora run (its run folder) instead of a fresh one.", None)


class AttentionMethod(LoraParams):
    name: Literal["attention"] = describe(
        "Only the attention projections (q, k, v, o) of the base model train (and the task head).",
        "attention")
    lora: bool = describe("Train them through LoRA (r, alpha, dropout) instead of directly.", False)


class DistillMethod(Strict):
    name: Literal["distill"] = describe(
        "Knowledge distillation: alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher/T || student/T).",
        "distill")
    teacher: str = describe("The teacher: an earlier ftray run folder (or its exported model folder).")
    alpha: float = describe("Weight of the hard-label loss.", 0.5, ge=0.0, le=1.0)
    temperature: float = describe("Softmax temperature of both teacher and student.", 2.0, gt=0.0, le=100.0)
    precompute: bool = describe(
        "Compute the teacher's logits once with Ray Data and stream them to the student (classifiers), "
        "instead of running the teacher in every worker.", False)


MethodSpec = Annotated[Union[FullMethod, TransferMethod, LoraMethod, AttentionMethod, DistillMethod],
                       Field(discriminator="name")]


# ------------------------------------------------------------------------------------- optimizer
class OptimizerBase(Strict):
    weight_decay: float = describe(
        "L2 penalty: coupled weight decay (sgd, rmsprop, adam), decoupled for adamw.", 0.0, ge=0.0, lt=1.0)


class SGD(OptimizerBase):
    name: Literal["sgd"] = describe("Stochastic gradient descent, optionally with momentum.", "sgd")
    momentum: float = describe("Momentum factor (0 = plain SGD).", 0.0, ge=0.0, lt=1.0)
    nesterov: bool = describe("Nesterov momentum (needs momentum > 0).", False)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class RMSprop(OptimizerBase):
    name: Literal["rmsprop"] = describe("RMSprop.", "rmsprop")
    alpha: float = describe("Smoothing constant of the squared-gradient average.", 0.99, gt=0.0, lt=1.0)
    eps: float = describe("Term added to the denominator.", 1e-8, gt=0.0)
    momentum: float = describe("Momentum factor.", 0.0, ge=0.0, lt=1.0)
    centered: bool = describe("Normalise by the gradient's estimated variance.", False)


class Adam(OptimizerBase):
    name: Literal["adam"] = describe("Adam.", "adam")
    betas: tuple[float, float] = describe("Decay rates of the first and second moments.", (0.9, 0.999))
    eps: float = describe("Term added to the denominator.", 1e-8, gt=0.0)
    amsgrad: bool = describe("Use the AMSGrad variant.", False)

    @model_validator(mode="after")
    def _betas_in_range(self):
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must lie in [0, 1)")
        return self


class AdamW(Adam):
    name: Literal["adamw"] = describe("AdamW (decoupled weight decay).", "adamw")
    weight_decay: float = describe("Decoupled weight decay.", 0.01, ge=0.0, lt=1.0)


OptimizerSpec = Annotated[Union[SGD, RMSprop, Adam, AdamW], Field(discriminator="name")]


class Schedule(Strict):
    name: Literal["constant", "step", "cosine", "linear", "plateau"] = describe(
        "Learning-rate schedule after warmup: constant, step decay, cosine or linear decay to "
        "`min_lr_ratio`, or reduce-on-plateau of the validation loss.", "constant")
    warmup_steps: int = describe("Optimizer steps of linear warmup from 0 (not with plateau).", 0, ge=0)
    step_epochs: int = describe("`step`: epochs between decays.", 1, ge=1)
    gamma: float = describe("`step`: decay factor.", 0.1, gt=0.0, le=1.0)
    min_lr_ratio: float = describe("`cosine`/`linear`: final rate as a share of `train.lr`.", 0.0,
                                   ge=0.0, le=1.0)
    factor: float = describe("`plateau`: factor applied when the loss stalls.", 0.5, gt=0.0, lt=1.0)
    patience: int = describe("`plateau`: epochs without improvement before a cut.", 2, ge=0)

    @model_validator(mode="after")
    def _plateau_has_no_warmup(self):
        if self.name == "plateau" and self.warmup_steps:
            raise ValueError("warmup_steps is not supported with the plateau schedule")
        return self


class EarlyStopping(Strict):
    patience: int = describe("Epochs without improvement before training stops (0 = never stop).",
                             0, ge=0)
    metric: str = describe("Validation metric to watch.", "val_loss")
    mode: Literal["min", "max"] = describe("Whether smaller or larger `metric` is better.", "min")
    min_delta: float = describe("Smallest change that counts as an improvement.", 0.0, ge=0.0)


class TrainSpec(Strict):
    epochs: int = describe("Passes over the training data.", 3, ge=1, le=100000)
    batch_size: int = describe("Examples per optimizer step, summed over all workers.", 32, ge=1,
                               le=1 << 20)
    lr: float = describe("Peak learning rate.", 1e-3, gt=0.0, le=10.0)
    optimizer: OptimizerSpec = describe("Optimizer and its own parameters.", default_factory=AdamW)
    schedule: Schedule = describe("Learning-rate schedule.", default_factory=Schedule)
    l1: float = describe("L1 penalty on trainable weights (added to the loss).", 0.0, ge=0.0)
    grad_clip: float | None = describe("Clip the global gradient norm to this value (None = off).",
                                       None, gt=0.0)
    grad_accum_steps: int = describe("Micro-batches accumulated into one optimizer step.", 1, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = describe(
        "Compute precision (bf16/fp16 through autocast; fp16 needs a GPU).", "fp32")
    early_stopping: EarlyStopping = describe("Stop when a validation metric stops improving.",
                                             default_factory=EarlyStopping)


class ScalingSpec(Strict):
    num_workers: int = describe("Data-parallel training workers.", 1, ge=1, le=1024)
    use_gpu: bool = describe("Give each worker one GPU.", False)
    cpus_per_worker: float = describe("CPUs reserved (and torch threads) per worker.", 1.0, gt=0.0, le=256)


class RunSpec(Strict):
    name: str = describe("Run name: the folder under `storage_path`; re-running it resumes.",
                         pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    storage_path: str = describe("Where run folders live: a local path or a URI (s3://, gs://, ...).",
                                 "runs")
    seed: int = describe("Seed for weights, data split, shuffling and dropout.", 0, ge=0)
    max_failures: int = describe("Worker-group restarts from the last checkpoint before giving up.",
                                 0, ge=0, le=1000)
    keep_checkpoints: int = describe("Most recent checkpoints kept.", 2, ge=1)


Distribution = Literal["choice", "grid", "uniform", "loguniform", "randint", "quniform"]


class SchedulerSpec(Strict):
    name: Literal["fifo", "asha", "median", "hyperband"] = describe(
        "Trial scheduler: run all to the end, or stop hopeless trials early (ASHA, median rule, HyperBand).",
        "fifo")
    grace_period: int = describe("Epochs every trial runs before it can be stopped.", 1, ge=1)
    reduction_factor: float = describe("ASHA/HyperBand: keep 1/reduction_factor of trials per rung.", 3.0,
                                       gt=1.0)


class EnsembleSpec(Strict):
    top_k: int = describe("Members: the k best trials.", 3, ge=2, le=100)
    combine: Literal["vote", "average", "stack"] = describe(
        "Majority vote, mean of class probabilities, or a logistic regression on the members' "
        "probabilities fit on the validation data (regression: always the mean).", "average")


class TuneSpec(Strict):
    space: dict[str, dict[Distribution, list]] = describe(
        "Dotted spec keys mapped to one distribution each, e.g. `train.lr: {loguniform: [1e-4, 1e-1]}`.")
    metric: str = describe("Trial metric to optimise (a validation metric of the task).", "val_loss")
    mode: Literal["min", "max"] = describe("Whether smaller or larger `metric` is better.", "min")
    num_samples: int = describe("Trials to sample (with grid search: repeats of the whole grid).", 4,
                                ge=1, le=100000)
    max_concurrent: int = describe("Trials running at the same time.", 2, ge=1, le=1024)
    searcher: Literal["random", "grid", "optuna", "hyperopt"] = describe(
        "How trials are chosen: random sampling, the grid, or Ray Tune's Optuna / HyperOpt integration.",
        "random")
    scheduler: SchedulerSpec = describe("Early stopping of trials.", default_factory=SchedulerSpec)
    ensemble: EnsembleSpec | None = describe("Combine the top trials into one exported model.", None)

    @model_validator(mode="after")
    def _space_is_well_formed(self):
        for key, dist in self.space.items():
            if len(dist) != 1:
                raise ValueError(f"space.{key}: give exactly one distribution, got {sorted(dist)}")
            (kind, args), = dist.items()
            if kind in ("choice", "grid"):
                if not args:
                    raise ValueError(f"space.{key}.{kind}: needs at least one value")
            elif kind == "quniform":
                if len(args) != 3 or not all(isinstance(a, (int, float)) for a in args) or args[0] >= args[1]:
                    raise ValueError(f"space.{key}.quniform: needs [low, high, step] numbers with low < high")
            elif len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or args[0] >= args[1]:
                raise ValueError(f"space.{key}.{kind}: needs [low, high] numbers with low < high")
            elif kind == "loguniform" and args[0] <= 0:
                raise ValueError(f"space.{key}.loguniform: bounds must be positive")
            if self.searcher == "grid" and kind not in ("grid", "choice"):
                raise ValueError(f"space.{key}: the grid searcher takes only grid/choice dimensions")
        if not self.space:
            raise ValueError("space: name at least one spec key to search")
        return self


class JobSpec(Strict):
    """A whole job: what to fine-tune (model, data), how (method, train) and where (scaling, run)."""
    model: ModelSpec = describe("What to fine-tune.")
    data: DataSpec = describe("Training and validation data.")
    method: MethodSpec = describe("How to fine-tune.", default_factory=FullMethod)
    train: TrainSpec = describe("Training hyperparameters.", default_factory=TrainSpec)
    scaling: ScalingSpec = describe("How many workers and which devices.", default_factory=ScalingSpec)
    run: RunSpec = describe("Name, storage, seed and fault tolerance of the run.")
    tune: TuneSpec | None = describe("Hyperparameter sweep for `ftray sweep` (ignored by `ftray run`).", None)

    @model_validator(mode="after")
    def _consistent(self):
        if isinstance(self.model, MLPModel) and not self.data.features:
            raise ValueError("data.features: an mlp model needs at least one feature column")
        d = self.data
        if isinstance(self.model, HFModel) and not (d.text or (d.prompt and d.response)):
            raise ValueError("data.text: an hf model needs a text column (or data.prompt and data.response)")
        if (d.prompt is None) != (d.response is None):
            raise ValueError("data.prompt: give both data.prompt and data.response, or neither")
        if d.prompt and d.task != "causal_lm":
            raise ValueError("data.prompt: prompt/response columns are for data.task: causal_lm")
        if d.packing and d.task != "causal_lm":
            raise ValueError("data.packing: packing is for data.task: causal_lm")
        if isinstance(self.method, DistillMethod) and self.method.precompute and d.task == "causal_lm":
            raise ValueError("method.precompute: token-level logits (vocabulary x sequence per row) are too "
                             "large to store; run the teacher in the workers (precompute: false)")
        if isinstance(self.method, (LoraMethod, AttentionMethod)) and not isinstance(self.model, HFModel):
            raise ValueError(f"method.name: {self.method.name} needs model.name: hf")
        if self.data.task == "causal_lm" and isinstance(self.model, MLPModel):
            raise ValueError("data.task: causal_lm needs model.name: hf")
        if self.data.task != "causal_lm" and not self.data.label:
            raise ValueError(f"data.label: a {self.data.task} task needs a label column")
        if self.train.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("train.precision: fp16 needs scaling.use_gpu: true (use bf16 on CPU)")
        metrics = {"train_loss", "val_loss", TASK_METRICS[self.data.task]}
        if self.tune and self.tune.ensemble and self.data.task == "causal_lm":
            raise ValueError("tune.ensemble: ensembles are for classification and regression tasks")
        if self.tune and self.tune.metric not in metrics:
            raise ValueError(f"tune.metric: {self.tune.metric!r} is not reported for a {self.data.task} task; "
                             f"choose one of {sorted(metrics)}")
        if self.train.early_stopping.metric not in metrics:
            raise ValueError(f"train.early_stopping.metric: {self.train.early_stopping.metric!r} is not "
                             f"reported for a {self.data.task} task; choose one of {sorted(metrics)}")
        if isinstance(self.method, TransferMethod) and isinstance(self.model, MLPModel) and \
                self.method.unfreeze_last > self.model.layers:
            raise ValueError(f"method.unfreeze_last: {self.method.unfreeze_last} blocks asked, the mlp has "
                             f"{self.model.layers} (model.layers)")
        per_step = self.scaling.num_workers * self.train.grad_accum_steps
        if self.train.batch_size % per_step:
            raise ValueError(
                f"train.batch_size: {self.train.batch_size} is not divisible by num_workers x "
                f"grad_accum_steps = {per_step}")
        return self

    @property
    def micro_batch_size(self) -> int:
        """Examples in one worker's forward pass."""
        return self.train.batch_size // (self.scaling.num_workers * self.train.grad_accum_steps)


TASK_METRICS = {"classification": "val_accuracy", "regression": "val_mse", "causal_lm": "val_perplexity"}


# ---------------------------------------------------------------------------------- YAML loading
class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases (no Python tags, no alias bombs)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed in a job spec", event.start_mark)
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_SPEC_DEPTH:
            raise yaml.constructor.ConstructorError(
                None, None, f"nested deeper than {MAX_SPEC_DEPTH} levels", self.peek_event().start_mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):  # `!!set 0`: let the base class raise its YAMLError
            return super().construct_mapping(node, deep=deep)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # `{[1]: x}`: the set below would raise a bare TypeError
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value, not a list or mapping",
                    key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not valid YAML: {e}") from None
    except (ValueError, TypeError, LookupError, AttributeError, OverflowError) as e:
        # PyYAML's scalar constructors raise plain Python errors on values that only look like
        # their type (`2020-02-30` read as a date, `!!int x`): still bad YAML in the input.
        raise SpecError(f"{source}: not valid YAML: a value cannot be read as its type "
                        f"({type(e).__name__}: {e})") from None


def parse_override(item: str) -> tuple[str, Any]:
    """`key.path=value` -> ("key.path", value parsed as a YAML scalar or flow collection)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {item!r}: expected key.path=value")
    return key.strip(), parse_yaml(value, f"--set {key}")


def apply_overrides(raw: dict, overrides: list[tuple[str, Any]]) -> dict:
    """Return a copy of `raw` with each dotted key set; missing mappings on the way are created."""
    out = copy.deepcopy(raw)
    for key, value in overrides:
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        # Discriminated unions put the chosen tag in the location (`model.mlp.units`): drop it.
        loc = _without_union_tags(e["loc"])
        path = ".".join(loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown name {e['input'].get('name')!r}; choose one of {e['ctx']['expected_tags']}" \
                if isinstance(e.get("input"), dict) else msg
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def _union_fields(model: type[BaseModel], prefix: tuple = ()) -> set[tuple]:
    """Paths of the discriminated-union fields (`model`, `method`, `train.optimizer`)."""
    out = set()
    for name, field in model.model_fields.items():
        path = prefix + (name,)
        if field.discriminator:
            out.add(path)
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out |= _union_fields(arg, path)
    return out


def _without_union_tags(loc: tuple) -> list[str]:
    """An error location with the union tag pydantic inserts after a union field removed."""
    out: list[str] = []
    for i, part in enumerate(loc):
        if i and tuple(loc[:i]) in _UNION_FIELDS:
            continue  # `model.mlp.units` -> `model.units`
        out.append(str(part))
    return out


def validate(raw: Any, source: str) -> JobSpec:
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else type(raw).__name__
        raise SpecError(f"{source}: the top level must be a mapping of sections, not {kind}")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(format_validation_error(source, e)) from None


def read_spec_file(path: str | os.PathLike) -> dict:
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"{path}: is a folder, not a spec file")
    if not p.is_file():
        raise SpecError(f"{path}: no such spec file")
    if p.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES} bytes; a job spec is a short YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:  # unreadable (permissions, a dangling mount): still bad input
        raise SpecError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_yaml(text, str(path))


def _absolute(path: str | None, key: str, local_only_if_exists: bool = False) -> str | None:
    """Local paths made absolute against the current directory; URIs (and hub ids) left alone."""
    if path is None or "://" in path or path.startswith("package:"):
        return path
    try:
        local = Path(path).expanduser()
        if local_only_if_exists and not (local.exists() or path.startswith((".", "/", "~"))):
            return path  # a hub id such as org/model
        return str(local.resolve())
    except (RuntimeError, ValueError, OSError) as e:  # `~nosuchuser/...`, a NUL byte, a symlink loop
        raise SpecError(f"{key}: {path!r} is not a usable local path ({e})") from None


def with_absolute_paths(spec: JobSpec) -> JobSpec:
    """Ray workers do not share the driver's working directory: pin every local path."""
    model = spec.model.model_copy(update={"init_from": _absolute(spec.model.init_from, "model.init_from")})
    method = spec.method
    for key in ("teacher", "adapter_from"):
        if getattr(method, key, None):
            method = method.model_copy(update={key: _absolute(getattr(method, key), f"method.{key}")})
    if isinstance(model, HFModel):
        model = model.model_copy(update={"path": _absolute(model.path, "model.path", local_only_if_exists=True)})
    return spec.model_copy(update={
        "model": model,
        "method": method,
        "data": spec.data.model_copy(update={"path": _absolute(spec.data.path, "data.path"),
                                             "val_path": _absolute(spec.data.val_path, "data.val_path")}),
        "run": spec.run.model_copy(update={"storage_path": _absolute(spec.run.storage_path,
                                                                     "run.storage_path")}),
    })


PATH_KEYS = (("data", "path"), ("data", "val_path"), ("model", "path"), ("model", "init_from"),
             ("method", "teacher"), ("method", "adapter_from"), ("run", "storage_path"))


def pin_paths(raw: dict, spec: JobSpec) -> dict:
    """A copy of the raw mapping with the paths the user gave replaced by `spec`'s pinned ones."""
    out, pinned = copy.deepcopy(raw), spec.model_dump(mode="json")
    for section, key in PATH_KEYS:
        if isinstance(out.get(section), dict) and out[section].get(key) is not None:
            out[section][key] = pinned[section][key]
    if isinstance(out.get("run"), dict) and "storage_path" not in out["run"]:
        out["run"]["storage_path"] = pinned["run"]["storage_path"]
    return out


def load_spec(path: str | os.PathLike, overrides: list[str] = ()) -> JobSpec:
    """Read, override and validate a job spec; raises SpecError naming the file and key path.

    Relative local paths in the result are resolved against the current directory."""
    return load_spec_and_raw(path, overrides)[0]


def load_spec_and_raw(path: str | os.PathLike, overrides: list[str] = ()) -> tuple[JobSpec, dict]:
    """`load_spec`, plus the overridden raw mapping with the same paths pinned (what a sweep
    applies each trial's values to, so that `train.optimizer.name: sgd` replaces only the name)."""
    raw = read_spec_file(path)
    if overrides:
        if not isinstance(raw, dict):
            validate(raw, str(path))  # raises the top-level message
        raw = apply_overrides(raw, [parse_override(o) for o in overrides])
    spec = validate(raw, str(path))
    try:
        spec = with_absolute_paths(spec)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    return spec, pin_paths(raw, spec)


_UNION_FIELDS = _union_fields(JobSpec)
