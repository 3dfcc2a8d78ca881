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
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    kernels: Literal["default", "liger"] = describe(
        "`liger`: Liger's fused Triton kernels for RMSNorm, rotary embeddings and the gated MLP, on GPUs, "
        "for the decoder families Liger supports (Llama, Mistral, Qwen, Gemma, ...); needs "
        "`pip install liger-kernel`. `default`: transformers' own layers.", "default")
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
        "Numeric input columns for `mlp` and the `multimodal` tabular encoder (one list-valued column or "
        "several scalar columns).",
        default_factory=list)
    text: str | None = describe("Text column for `hf` models (and the `multimodal` text encoder).", None)
    image: str | None = describe(
        "`multimodal`: image column, one fixed-shape numeric array per row (HxW or CxHxW nested lists).", None)
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
class MethodConfig(Strict):
    """What every method's config has: the kind of run it is (`ftray.runner.runner_for` picks the
    runner by it): a supervised Ray Train run, or an RLlib one."""
    run_kind: ClassVar[Literal["train", "rllib"]] = "train"


class FullMethod(MethodConfig):
    name: Literal["full"] = describe("Train every parameter of the model.", "full")


class TransferMethod(MethodConfig):
    name: Literal["transfer"] = describe(
        "Freeze the backbone and train a head (and optionally the last blocks).", "transfer")
    new_head: bool = describe("Replace the head with a fresh one sized for this data's labels.", True)
    unfreeze_last: int = describe("Backbone blocks, counted from the top, that train too.", 0, ge=0)
    backbone_lr_scale: float = describe(
        "Learning rate of unfrozen backbone blocks as a multiple of `train.lr`.", 1.0, gt=0.0, le=1.0)


class LoraParams(MethodConfig):
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


class DistillMethod(MethodConfig):
    name: Literal["distill"] = describe(
        "Knowledge distillation: alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher/T || student/T).",
        "distill")
    teacher: str = describe("The teacher: an earlier ftray run folder (or its exported model folder).")
    alpha: float = describe("Weight of the hard-label loss.", 0.5, ge=0.0, le=1.0)
    temperature: float = describe("Softmax temperature of both teacher and student.", 2.0, gt=0.0, le=100.0)
    precompute: bool = describe(
        "Compute the teacher's logits once with Ray Data and stream them to the student (classifiers), "
        "instead of running the teacher in every worker.", False)


class IncrementalMethod(MethodConfig):
    name: Literal["incremental"] = describe(
        "Continual learning: continue `model.init_from` on new data with replay of old data and an EWC "
        "penalty; reports forgetting on the old task.", "incremental")
    replay_path: str = describe("Old training data (same columns) to replay from: a file or folder, path or URI.")
    replay_ratio: float = describe(
        "Old rows mixed into training per new training row (0 = no replay).", 0.5, ge=0.0, le=10.0)
    old_val_path: str = describe("Old task's validation data (same columns): forgetting is measured on it.")
    ewc_lambda: float = describe(
        "Weight of the EWC penalty lambda/2 * sum F * (theta - theta_old)^2 (0 = off).", 100.0, ge=0.0)
    fisher_rows: int = describe("Rows of the replay data the diagonal Fisher information is estimated on.",
                                512, ge=1, le=1 << 20)


class MetaMethod(MethodConfig):
    name: Literal["meta"] = describe(
        "Meta-learning over tasks (a task column): `train.batch_size` counts tasks per meta-batch, "
        "`train.lr` is the meta learning rate (outer step of `train.optimizer`).", "meta")
    algorithm: Literal["reptile", "fomaml"] = describe(
        "Reptile (move toward the adapted weights) or first-order MAML (query-loss gradient at them).",
        "reptile")
    task_column: str = describe("Column naming each row's task.", "task")
    shots: int = describe("k: support rows per task for adaptation (fomaml also takes k query rows).",
                          10, ge=1, le=100000)
    inner_steps: int = describe("SGD steps of adaptation to a task's support rows in training.", 5, ge=1, le=1000)
    inner_lr: float = describe("Learning rate of those adaptation steps.", 0.01, gt=0.0, le=10.0)
    eval_steps: int = describe("Adaptation steps on each held-out task's k shots at evaluation.", 10,
                               ge=0, le=10000)


class RLStop(Strict):
    env_steps: int | None = describe("Stop after this many sampled environment steps.", 100000, ge=1)
    target_return: float | None = describe(
        "Stop once the greedy evaluation return (`evaluation_episodes`, checked every iteration) reaches "
        "this; the env steps it took are the summary's `rl.steps_to_target`.", None)
    iterations: int | None = describe("Stop after this many training iterations.", None, ge=1)


class RLMethod(MethodConfig):
    run_kind: ClassVar[Literal["train", "rllib"]] = "rllib"
    name: Literal["rl"] = describe(
        "Reinforcement learning with RLlib (`model` is the policy network; no `data`).", "rl")
    env: str = describe("Environment: a Gymnasium id (`CartPole-v1`) or `module:Class` of a gymnasium.Env.")
    env_kwargs: dict[str, Any] = describe("Keyword arguments of the environment's constructor.", {})
    algorithm: Literal["ppo"] = describe("RLlib algorithm.", "ppo")
    env_runners: int = describe("Sampling actors (0 = sample in the driver process).", 1, ge=0, le=1024)
    lr: float = describe("Learning rate.", 3e-4, gt=0.0, le=1.0)
    gamma: float = describe("Discount factor.", 0.99, gt=0.0, le=1.0)
    gae_lambda: float = describe("GAE lambda.", 0.95, ge=0.0, le=1.0)
    clip: float = describe("PPO clip parameter of the probability ratio.", 0.2, gt=0.0, le=10.0)
    entropy_coeff: float = describe("Weight of the entropy bonus.", 0.0, ge=0.0, le=10.0)
    train_batch: int = describe("Environment steps sampled per training iteration (all learners).", 4000,
                                ge=1, le=1 << 24)
    minibatch: int = describe("Steps per SGD minibatch.", 128, ge=1, le=1 << 24)
    epochs: int = describe("SGD passes over each train batch.", 10, ge=1, le=1000)
    critic_warmup_steps: int | None = describe(
        "Env steps at the start during which only the value network learns (the policy's learning "
        "rate is 0), so a pretrained policy is not pushed by a value network that knows nothing yet. "
        "Default: two `train_batch`es with a pretrained start, 0 from scratch.", None, ge=0, le=1 << 40)
    stop: RLStop = describe("When training stops (whichever comes first).", default_factory=RLStop)
    evaluation_episodes: int = describe(
        "Greedy episodes that score the policy: at the start, after every iteration (for "
        "`stop.target_return`) and at the end.", 10, ge=1, le=100000)
    demos: str | None = describe(
        "Pretrain by behaviour cloning on these demonstrations (Parquet in RLlib's columns: obs, new_obs, "
        "actions, rewards, terminateds), e.g. written by `ftray rl collect`.", None)
    bc_iterations: int = describe("Behaviour-cloning updates (one `bc_batch` each).", 100, ge=1, le=1000000)
    bc_lr: float = describe("Behaviour-cloning learning rate.", 1e-3, gt=0.0, le=1.0)
    bc_batch: int = describe("Demonstration steps per behaviour-cloning update.", 256, ge=1, le=1 << 24)
    init_checkpoint: str | None = describe(
        "Start from an earlier RLlib checkpoint: an ftray rl run folder, an algorithm checkpoint, or its "
        "module folder (the environment may differ; the spaces must match).", None)


MethodSpec = Annotated[Union[FullMethod, TransferMethod, LoraMethod, AttentionMethod, DistillMethod,
                             IncrementalMethod, MetaMethod, RLMethod],
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
    compile: bool = describe("torch.compile the model: faster GPU steps after a compile warm-up. Each "
                             "epoch's last, incomplete training batch is then left out (its shape would "
                             "compile the model again).", False)
    early_stopping: EarlyStopping = describe("Stop when a validation metric stops improving.",
                                             default_factory=EarlyStopping)


class ScalingSpec(Strict):
    num_workers: int = describe(
        "Data-parallel training workers; `[min, max]` trains elastically (needs `run.max_failures` > 0).",
        1, ge=1, le=1024)
    min_workers: int | None = describe(
        "Elastic training: the fewest workers to go on with after losing nodes (`num_workers: [min, max]` "
        "sets it; None = fixed size).", None, ge=1, le=1024)
    use_gpu: bool = describe("Give each worker one GPU.", False)
    cpus_per_worker: float = describe("CPUs reserved (and torch threads) per worker.", 1.0, gt=0.0, le=256)
    strategy: Literal["ddp", "fsdp"] = describe(
        "ddp: a model replica per worker; fsdp: FSDP2 shards weights, gradients and optimizer state "
        "over the workers (for models that do not fit one device) and under bf16 computes with bf16 "
        "copies of the fp32 weights: the fastest full fine-tuning we measured on one GPU too (LoRA "
        "runs faster under ddp).", "ddp")

    @model_validator(mode="before")
    @classmethod
    def _elastic_range(cls, raw: Any) -> Any:
        # `num_workers: [min, max]` is stored as min_workers plus num_workers (the max), so that
        # num_workers stays the one int every other part of ftray reads.
        if isinstance(raw, dict) and isinstance(raw.get("num_workers"), (list, tuple)) \
                and len(raw["num_workers"]) == 2 and "min_workers" not in raw:
            low, high = raw["num_workers"]
            raw = {**raw, "num_workers": high, "min_workers": low}
        return raw

    @model_validator(mode="after")
    def _elastic_order(self) -> "ScalingSpec":
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(f"num_workers: the range [{self.min_workers}, {self.num_workers}] has min > max")
        return self

    @property
    def elastic(self) -> bool:
        """Whether the worker count may change during the run (nodes lost or added)."""
        return self.min_workers is not None and self.min_workers < self.num_workers


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


class FifoScheduler(Strict):
    name: Literal["fifo"] = describe("Run every trial to the end.", "fifo")


class AshaScheduler(Strict):
    name: Literal["asha"] = describe("Asynchronous successive halving: stop the worse trials at each rung.", "asha")
    grace_period: int = describe("Epochs every trial runs before it can be stopped.", 1, ge=1)
    reduction_factor: float = describe("Keep 1/reduction_factor of the trials at each rung.", 3.0, gt=1.0)


class MedianScheduler(Strict):
    name: Literal["median"] = describe("Stop a trial whose best result is below the median of the others'.",
                                       "median")
    grace_period: int = describe("Epochs every trial runs before it can be stopped.", 1, ge=1)


class HyperbandScheduler(Strict):
    name: Literal["hyperband"] = describe("HyperBand: successive halving over several brackets.", "hyperband")
    reduction_factor: float = describe("Keep 1/reduction_factor of the trials at each rung.", 3.0, gt=1.0)


# What PBT/PB2 may change in a running trial: values the training loop reads from the spec at every
# step (optimizer hyperparameters, penalties). Structure (layers, units, dropout) is baked into the
# checkpointed model, so such keys are only sampled at the start and copied along with a checkpoint.
PBT_MUTABLE = ("train.lr", "train.l1", "train.grad_clip", "train.optimizer.weight_decay",
               "train.optimizer.momentum")


class _Population(Strict):
    """What PBT and PB2 share: when and from whom a trial copies a better trial's checkpoint."""
    perturbation_interval: int = describe("Epochs between exploit/explore steps.", 1, ge=1)
    quantile_fraction: float = describe("Share of trials that copy (bottom) and are copied (top).", 0.25,
                                        gt=0.0, le=0.5)
    synch: bool = describe("Wait for every trial at each perturbation point (exploits even when trials run "
                           "one after another on a small machine).", False)


class PBTScheduler(_Population):
    name: Literal["pbt"] = describe(
        "Population Based Training: every `perturbation_interval` epochs the worse trials continue from "
        "a better trial's checkpoint with mutated hyperparameters (needs `tune.trial: packed`).", "pbt")
    resample_probability: float = describe(
        "Chance that a mutated value is drawn afresh from `space` instead of scaled by 0.8 or 1.2.", 0.25,
        ge=0.0, le=1.0)


class PB2Scheduler(_Population):
    name: Literal["pb2"] = describe(
        "PB2: PBT whose new hyperparameters come from a Gaussian-process bandit over the `space` bounds "
        "(uniform/loguniform dimensions; needs `tune.trial: packed`).", "pb2")


SchedulerSpec = Annotated[Union[FifoScheduler, AshaScheduler, MedianScheduler, HyperbandScheduler,
                                PBTScheduler, PB2Scheduler], Field(discriminator="name")]


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
    scheduler: SchedulerSpec = describe("Early stopping of trials, or PBT/PB2.", default_factory=FifoScheduler)
    trial: Literal["train", "packed"] = describe(
        "Trial shape: a Ray Train run per trial (`scaling` applies), or `packed`: one process per trial "
        "training in place, reporting a Tune checkpoint each epoch (what PBT/PB2 need), with "
        "`gpu_fraction` of a GPU when `scaling.use_gpu`.", "train")
    gpu_fraction: float = describe("Packed trials with `scaling.use_gpu`: share of one GPU per trial.", 1.0,
                                   gt=0.0, le=1.0)
    group_by: str | None = describe(
        "A data column: run the sweep once per value of it (per-task search) and write the best spec "
        "per value.", None)
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

    def check_population_based(self) -> None:
        """PBT/PB2 need packed trials, their own sampling, a population and a key they may mutate."""
        s = self.scheduler
        if s.name not in ("pbt", "pb2"):
            return
        if self.trial != "packed":
            raise ValueError(f"tune.scheduler.name: {s.name} exploits trial checkpoints, which only packed "
                             f"trials report; set tune.trial: packed")
        if self.searcher != "random":
            raise ValueError(f"tune.searcher: {s.name} picks new values itself; use searcher: random")
        if self.num_samples < 2:
            raise ValueError(f"tune.num_samples: {s.name} needs a population of at least 2 trials")
        mutable = [k for k in self.space if k in PBT_MUTABLE]
        if not mutable:
            raise ValueError(f"tune.space: {s.name} needs at least one key it can change during training: "
                             f"{', '.join(PBT_MUTABLE)}")
        for key in mutable if s.name == "pb2" else ():
            (kind, _), = self.space[key].items()
            if kind not in ("uniform", "loguniform"):
                raise ValueError(f"tune.space.{key}: pb2 searches continuous bounds; give uniform or "
                                 f"loguniform, not {kind}")


class JobSpec(Strict):
    """A whole job: what to fine-tune (model, data), how (method, train) and where (scaling, run)."""
    model: ModelSpec = describe("What to fine-tune.")
    data: DataSpec | None = describe("Training and validation data (every method except rl).", None)
    method: MethodSpec = describe("How to fine-tune.", default_factory=FullMethod)
    train: TrainSpec = describe("Training hyperparameters.", default_factory=TrainSpec)
    scaling: ScalingSpec = describe("How many workers and which devices.", default_factory=ScalingSpec)
    run: RunSpec = describe("Name, storage, seed and fault tolerance of the run.")
    tune: TuneSpec | None = describe("Hyperparameter sweep for `ftray sweep` (ignored by `ftray run`).", None)

    @model_validator(mode="after")
    def _consistent(self):
        if isinstance(self.method, RLMethod):
            return self._rl_consistent()
        if self.data is None:
            raise ValueError("data: required (only method.name: rl runs without data)")
        if isinstance(self.model, MLPModel) and not self.data.features:
            raise ValueError("data.features: an mlp model needs at least one feature column")
        d = self.data
        if isinstance(self.model, HFModel) and not (d.text or (d.prompt and d.response)):
            raise ValueError("data.text: an hf model needs a text column (or data.prompt and data.response)")
        if isinstance(self.model, MultimodalModel):
            columns = {"image": ("data.image", d.image), "text": ("data.text", d.text),
                       "tabular": ("data.features", d.features)}
            for modality in self.model.modalities:
                key, column = columns[modality]
                if not column:
                    raise ValueError(f"{key}: the multimodal model's {modality} encoder needs its column")
        elif d.image:
            raise ValueError("data.image: image columns are for model.name: multimodal")
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
        if isinstance(self.method, IncrementalMethod) and not self.model.init_from:
            raise ValueError("method.name: incremental continues an earlier run: set model.init_from")
        if isinstance(self.method, MetaMethod):
            if not isinstance(self.model, MLPModel) or d.task == "causal_lm":
                raise ValueError("method.name: meta needs model.name: mlp and a classification or regression task")
            if self.train.grad_accum_steps != 1:
                raise ValueError("train.grad_accum_steps: meta takes one step per meta-batch (set 1)")
        if self.data.task == "causal_lm" and not isinstance(self.model, HFModel):
            raise ValueError("data.task: causal_lm needs model.name: hf")
        if self.data.task != "causal_lm" and not self.data.label:
            raise ValueError(f"data.label: a {self.data.task} task needs a label column")
        if self.scaling.strategy == "fsdp" and (self.train.l1 or self.train.precision == "fp16"):
            raise ValueError("scaling.strategy: fsdp supports neither train.l1 nor fp16 (use bf16)")
        if isinstance(self.model, HFModel) and self.model.kernels == "liger" and not self.scaling.use_gpu:
            raise ValueError("model.kernels: liger's kernels run on GPUs; set scaling.use_gpu: true "
                             "(or model.kernels: default)")
        if self.train.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("train.precision: fp16 needs scaling.use_gpu: true (use bf16 on CPU)")
        metrics = {"train_loss", "val_loss", TASK_METRICS[self.data.task]}
        if self.tune and self.tune.ensemble and self.data.task == "causal_lm":
            raise ValueError("tune.ensemble: ensembles are for classification and regression tasks")
        if self.tune:
            self.tune.check_population_based()
        if self.tune and self.tune.trial == "packed" and self.scaling.num_workers != 1:
            raise ValueError(f"scaling.num_workers: a packed trial trains in one process; got "
                             f"{self.scaling.num_workers} (use tune.trial: train for data-parallel trials)")
        if self.tune and self.tune.group_by and self.tune.group_by in (d.label, *d.features):
            raise ValueError(f"tune.group_by: {self.tune.group_by!r} is the label or a feature; name the "
                             f"column that tells the tasks apart")
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
        if self.scaling.elastic:
            if not self.run.max_failures:
                raise ValueError("scaling.num_workers: an elastic range needs run.max_failures > 0 (losing a "
                                 "node is a failure the run restarts from)")
            for workers in range(self.scaling.min_workers, self.scaling.num_workers + 1):
                if self.train.batch_size % (workers * self.train.grad_accum_steps):
                    raise ValueError(f"train.batch_size: {self.train.batch_size} is not divisible by {workers} "
                                     f"workers x grad_accum_steps, a size the elastic range allows")
        return self

    def micro_batch_for(self, workers: int) -> int:
        """Examples in one worker's forward pass when `workers` workers train (elastic runs)."""
        return self.train.batch_size // (workers * self.train.grad_accum_steps)

    def _rl_consistent(self):
        m = self.method
        if self.data is not None:
            raise ValueError("data: method rl learns from its environment; remove the data section "
                             "(demonstrations go in method.demos)")
        if not isinstance(self.model, MLPModel):
            raise ValueError("model.name: method rl needs model.name: mlp (the policy network)")
        if self.model.dropout:
            # PPO's probability ratio compares the sampling policy with the trained one: both must be
            # the same deterministic network.
            raise ValueError("model.dropout: method rl needs 0 (PPO's ratio needs a deterministic policy)")
        if self.train.model_fields_set:
            raise ValueError("train: method rl takes its hyperparameters from method (lr, gamma, gae_lambda, "
                             "clip, entropy_coeff, train_batch, minibatch, epochs)")
        starts = [k for k, v in (("method.demos", m.demos), ("method.init_checkpoint", m.init_checkpoint),
                                 ("model.init_from", self.model.init_from)) if v]
        if len(starts) > 1:
            raise ValueError(f"{starts[1]}: give one pretrained start, not {' and '.join(starts)}")
        if m.minibatch > m.train_batch:
            raise ValueError(f"method.minibatch: {m.minibatch} is larger than method.train_batch {m.train_batch}")
        if m.train_batch % self.scaling.num_workers:
            raise ValueError(f"method.train_batch: {m.train_batch} is not divisible by the "
                             f"{self.scaling.num_workers} learners (scaling.num_workers)")
        if not (m.stop.env_steps or m.stop.target_return is not None or m.stop.iterations):
            raise ValueError("method.stop: give at least one of env_steps, target_return, iterations")
        if self.tune:
            if self.tune.metric != "episode_return_mean" or self.tune.mode != "max":
                raise ValueError("tune.metric: an rl sweep maximises episode_return_mean "
                                 "(tune.metric: episode_return_mean, tune.mode: max)")
            if self.tune.ensemble:
                raise ValueError("tune.ensemble: ensembles are for classification and regression tasks")
            if self.tune.scheduler.name not in ("fifo", "asha"):
                raise ValueError(f"tune.scheduler.name: {self.tune.scheduler.name} is not supported for "
                                 "method rl (fifo, asha)")
            if self.tune.trial != "train" or self.tune.group_by:
                raise ValueError("tune.trial: an rl sweep runs one RLlib algorithm per trial (no packed "
                                 "trials, no group_by)")
        return self

    @property
    def micro_batch_size(self) -> int:
        """Examples in one worker's forward pass."""
        return self.micro_batch_for(self.scaling.num_workers)


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
    for key in ("teacher", "adapter_from", "replay_path", "old_val_path", "demos", "init_checkpoint"):
        if getattr(method, key, None):
            method = method.model_copy(update={key: _absolute(getattr(method, key), f"method.{key}")})
    if isinstance(model, HFModel):
        model = model.model_copy(update={"path": _absolute(model.path, "model.path", local_only_if_exists=True)})
    if isinstance(model, MultimodalModel) and model.text.path:
        text = model.text.model_copy(update={"path": _absolute(model.text.path, "model.text.path",
                                                               local_only_if_exists=True)})
        model = model.model_copy(update={"text": text})
    return spec.model_copy(update={
        "model": model,
        "method": method,
        "data": spec.data and spec.data.model_copy(update={
            "path": _absolute(spec.data.path, "data.path"),
            "val_path": _absolute(spec.data.val_path, "data.val_path")}),
        "run": spec.run.model_copy(update={"storage_path": _absolute(spec.run.storage_path,
                                                                     "run.storage_path")}),
    })


PATH_KEYS = (("data", "path"), ("data", "val_path"), ("model", "path"), ("model", "init_from"),
             ("method", "teacher"), ("method", "adapter_from"), ("method", "replay_path"),
             ("method", "old_val_path"), ("method", "demos"), ("method", "init_checkpoint"),
             ("run", "storage_path"))


def pin_paths(raw: dict, spec: JobSpec) -> dict:
    """A copy of the raw mapping with the paths the user gave replaced by `spec`'s pinned ones."""
    out, pinned = copy.deepcopy(raw), spec.model_dump(mode="json")
    for section, key in PATH_KEYS:
        if isinstance(out.get(section), dict) and out[section].get(key) is not None:
            out[section][key] = pinned[section][key]
    text = out["model"].get("text") if isinstance(out.get("model"), dict) else None
    if isinstance(text, dict) and text.get("path") is not None:  # a multimodal model's text encoder
        text["path"] = pinned["model"]["text"]["path"]
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
