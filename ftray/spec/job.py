"""The whole job spec and its rules across sections.

A method's own rules live on its config (`MethodConfig.check_job`, in `ftray.methods`); the
functions here hold the rules every supervised method shares, in the order they are checked (the
first broken rule is the one reported)."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field, model_validator

from ftray.methods import METHODS
from ftray.methods.full.config import FullMethod
from ftray.schema import Strict, describe
from ftray.spec.data import TASK_METRICS, DataSpec
from ftray.spec.model import ModelSpec
from ftray.spec.run import RunSpec
from ftray.spec.scaling import ScalingSpec
from ftray.spec.serve import ServeSpec
from ftray.spec.train import TrainSpec
from ftray.spec.tune import TuneSpec

# The `method` section: one of the registered methods' configs, chosen by `name`.
MethodSpec = Annotated[Union[tuple(METHODS.values())], Field(discriminator="name")]


class JobSpec(Strict):
    """A whole job: what to fine-tune (model, data), how (method, train) and where (scaling, run)."""
    model: ModelSpec = describe("What to fine-tune.")
    data: DataSpec | None = describe("Training and validation data (every method except rl).", None)
    method: MethodSpec = describe("How to fine-tune.", default_factory=FullMethod)
    train: TrainSpec = describe("Training hyperparameters.", default_factory=TrainSpec)
    scaling: ScalingSpec = describe("How many workers and which devices.", default_factory=ScalingSpec)
    run: RunSpec = describe("Name, storage, seed and fault tolerance of the run.")
    tune: TuneSpec | None = describe("Hyperparameter sweep for `ftray sweep` (ignored by `ftray run`).", None)
    serve: ServeSpec = describe("How `ftray serve` serves the finished model (ignored by training).",
                                default_factory=ServeSpec)

    @model_validator(mode="after")
    def _consistent(self):
        if not self.method.supervised:  # rl: its own rules cover the whole spec
            self.method.check_job(self)
            return self
        if self.data is None:
            raise ValueError("data: required (only method.name: rl runs without data)")
        _check_columns(self)
        self.method.check_job(self)
        _check_task(self)
        _check_devices(self)
        _check_metrics(self)
        _check_batches(self)
        return self

    def micro_batch_for(self, workers: int) -> int:
        """Examples in one worker's forward pass when `workers` workers train (elastic runs)."""
        return self.train.batch_size // (workers * self.train.grad_accum_steps)

    @property
    def validation_metrics(self) -> tuple[str, ...]:
        """The validation metrics besides `val_loss` that each epoch reports (the first is shown)."""
        return self.method.metrics or (TASK_METRICS[self.data.task],)

    @property
    def micro_batch_size(self) -> int:
        """Examples in one worker's forward pass."""
        return self.micro_batch_for(self.scaling.num_workers)


def _check_columns(spec: JobSpec) -> None:
    """The data names the columns the model's builder reads, and only columns its task uses."""
    d, model = spec.data, spec.model
    if model.name == "mlp" and not d.features:
        raise ValueError("data.features: an mlp model needs at least one feature column")
    if model.name == "hf" and not (d.text or (d.prompt and (d.response or d.chosen or spec.method.prompts))
                                   or d.messages):
        raise ValueError("data.text: an hf model needs a text column (or data.prompt and data.response, "
                         "or data.messages)")
    if model.name == "multimodal":
        columns = {"image": ("data.image", d.image), "text": ("data.text", d.text),
                   "tabular": ("data.features", d.features)}
        for modality in model.modalities:
            key, column = columns[modality]
            if not column:
                raise ValueError(f"{key}: the multimodal model's {modality} encoder needs its column")
    elif d.image:
        raise ValueError("data.image: image columns are for model.name: multimodal")
    _check_pairs(spec)
    _check_prompts(spec)
    if (d.prompt is None) != (d.response is None) and not (spec.method.pairs or spec.method.prompts):
        raise ValueError("data.prompt: give both data.prompt and data.response, or neither")
    if d.prompt and d.task != "causal_lm":
        raise ValueError("data.prompt: prompt/response columns are for data.task: causal_lm")
    _check_chat(d)
    if d.packing and d.task != "causal_lm":
        raise ValueError("data.packing: packing is for data.task: causal_lm")
    if d.normalize != "none" and model.name != "mlp":
        raise ValueError(f"data.normalize: scales the numeric features of an mlp; model.name: {model.name} "
                         "takes none")


def _check_pairs(spec: JobSpec) -> None:
    """Preference pairs (`data.chosen`, `data.rejected`) are the input of the pair methods, and
    theirs only: answers to `data.prompt` or to the `data.messages` turns."""
    d, method = spec.data, spec.method
    if not method.pairs:
        if d.chosen or d.rejected:
            raise ValueError(f"data.{'chosen' if d.chosen else 'rejected'}: preference pairs are for "
                             "method.name: dpo or simpo")
        return
    for key in ("chosen", "rejected"):
        if not getattr(d, key):
            raise ValueError(f"data.{key}: method.name: {method.name} needs the column of the {key} answer")
    _check_prompt_rows(spec, "a prompt", "and its two answers", "compares whole answers, one per row")
    if d.chosen == d.rejected:
        raise ValueError(f"data.rejected: {d.rejected!r} is data.chosen too")


def _check_prompts(spec: JobSpec) -> None:
    """Prompt rows (`data.prompt` or `data.messages`, and an optional `data.answer`) are the input
    of the methods that generate their own answers (grpo), and theirs only."""
    d, method = spec.data, spec.method
    if not method.prompts:
        if d.answer:
            raise ValueError("data.answer: an answer column is for method.name: grpo (its reward reads it)")
        return
    _check_prompt_rows(spec, "prompts", "and answers them itself", "generates one answer per row")


def _check_prompt_rows(spec: JobSpec, reads: str, answers: str, one_per_row: str) -> None:
    """What the methods reading prompt rows share (preference pairs, grpo's prompts): a causal_lm
    task, a prompt from data.prompt or data.messages (not data.text or data.response), no packing."""
    d, name = spec.data, spec.method.name
    if d.task != "causal_lm":
        raise ValueError(f"data.task: method.name: {name} trains a causal_lm")
    if not (d.prompt or d.messages) or d.text or d.response:
        raise ValueError(f"data.prompt: method.name: {name} reads {reads} (data.prompt, or the turns of "
                         f"data.messages) {answers}, not data.text or data.response")
    if d.packing:
        raise ValueError(f"data.packing: method.name: {name} {one_per_row}")


def _check_chat(d: DataSpec) -> None:
    """`data.messages` is a causal-LM input of its own; its options mean nothing without it."""
    if d.messages and (d.text or d.prompt):
        raise ValueError("data.messages: give data.messages or data.text or data.prompt/response, not several")
    if d.messages and d.task != "causal_lm":
        raise ValueError("data.messages: chat columns are for data.task: causal_lm")
    if not d.messages and d.chat_template != "tokenizer":
        raise ValueError("data.chat_template: a chat template is for data.messages")
    if not d.messages and d.train_on != "assistant":
        raise ValueError("data.train_on: train_on is for data.messages (prompt/response train on the response)")


def _check_task(spec: JobSpec) -> None:
    if spec.data.task == "causal_lm" and spec.model.name != "hf":
        raise ValueError("data.task: causal_lm needs model.name: hf")
    if spec.data.task != "causal_lm" and not spec.data.label:
        raise ValueError(f"data.label: a {spec.data.task} task needs a label column")


def _check_devices(spec: JobSpec) -> None:
    """What the chosen strategy, kernels and precision need from the devices."""
    train, scaling = spec.train, spec.scaling
    if scaling.strategy == "fsdp" and (train.l1 or train.precision == "fp16"):
        raise ValueError("scaling.strategy: fsdp supports neither train.l1 nor fp16 (use bf16)")
    if spec.model.name == "hf" and spec.model.attention == "flex_attention" and not scaling.use_gpu:
        # On a CPU its kernel takes minutes to compile (and gave NaN logits under packing here).
        raise ValueError("model.attention: flex_attention is for GPUs; set scaling.use_gpu: true "
                         "(or model.attention: sdpa)")
    if spec.model.name == "hf" and spec.model.kernels == "liger" and not scaling.use_gpu:
        raise ValueError("model.kernels: liger's kernels run on GPUs; set scaling.use_gpu: true "
                         "(or model.kernels: default)")
    if spec.model.name == "hf" and spec.model.fused_loss:
        _check_fused_loss(spec)
    if train.precision == "fp16" and not scaling.use_gpu:
        raise ValueError("train.precision: fp16 needs scaling.use_gpu: true (use bf16 on CPU)")


FUSED_LOSS_METHODS = ("full", "lora", "attention")  # the methods whose training loss is the task's


def _check_fused_loss(spec: JobSpec) -> None:
    """`model.fused_loss` replaces the next-token loss of the methods that train on the task's loss."""
    if spec.model.kernels != "liger":
        raise ValueError("model.fused_loss: the fused loss is Liger's; set model.kernels: liger")
    if spec.data.task != "causal_lm":
        raise ValueError("model.fused_loss: the fused loss is the next-token loss of data.task: causal_lm")
    if spec.method.name not in FUSED_LOSS_METHODS:
        raise ValueError(f"model.fused_loss: method.name: {spec.method.name} computes its own loss from the "
                         f"logits; the fused loss is for {', '.join(FUSED_LOSS_METHODS)}")


def _check_metrics(spec: JobSpec) -> None:
    """The sweep and early stopping watch metrics (and columns) the task reports."""
    d, tune = spec.data, spec.tune
    metrics = {"train_loss", "val_loss", *spec.validation_metrics}
    if tune and tune.ensemble and d.task == "causal_lm":
        raise ValueError("tune.ensemble: ensembles are for classification and regression tasks")
    if tune:
        tune.check_population_based()
    if tune and tune.trial == "packed" and spec.scaling.num_workers != 1:
        raise ValueError(f"scaling.num_workers: a packed trial trains in one process; got "
                         f"{spec.scaling.num_workers} (use tune.trial: train for data-parallel trials)")
    if tune and tune.group_by and tune.group_by in (d.label, *d.features):
        raise ValueError(f"tune.group_by: {tune.group_by!r} is the label or a feature; name the "
                         f"column that tells the tasks apart")
    if tune and tune.metric not in metrics:
        raise ValueError(f"tune.metric: {tune.metric!r} is not reported for a {d.task} task; "
                         f"choose one of {sorted(metrics)}")
    if spec.train.early_stopping.metric not in metrics:
        raise ValueError(f"train.early_stopping.metric: {spec.train.early_stopping.metric!r} is not "
                         f"reported for a {d.task} task; choose one of {sorted(metrics)}")


def _check_batches(spec: JobSpec) -> None:
    """The global batch splits evenly over workers and accumulation steps, at every elastic size."""
    train, scaling = spec.train, spec.scaling
    per_step = scaling.num_workers * train.grad_accum_steps
    if train.batch_size % per_step:
        raise ValueError(
            f"train.batch_size: {train.batch_size} is not divisible by num_workers x "
            f"grad_accum_steps = {per_step}")
    if scaling.elastic:
        if not spec.run.max_failures:
            raise ValueError("scaling.num_workers: an elastic range needs run.max_failures > 0 (losing a "
                             "node is a failure the run restarts from)")
        for workers in range(scaling.min_workers, scaling.num_workers + 1):
            if train.batch_size % (workers * train.grad_accum_steps):
                raise ValueError(f"train.batch_size: {train.batch_size} is not divisible by {workers} "
                                 f"workers x grad_accum_steps, a size the elastic range allows")
