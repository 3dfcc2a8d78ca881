"""`ftray run`: one job spec, fine-tuned data-parallel with Ray Train.

Read top to bottom: the worker side first, then the driver. The driver checks everything it can
before Ray starts (spec, data, model source, devices, the resume contract), starts or joins Ray
(`ftray.ray_context`), runs a TorchTrainer whose workers execute `train_loop`, then exports the
model and writes the run folder (`summary.json`, `model/`, `curves.png`, TensorBoard events).
The worker loop (`fit`: `setup`, then per epoch `train_epoch` of `optimizer_step`s, `end_epoch`,
`checkpoint_and_report`) is the one training loop every method plugs into.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import pyarrow.fs as pafs
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from ftray import checkpoint, data, parallel, progress, ray_context, resume, tracking, tracking_wandb
from ftray.methods import get_method
from ftray.models import ModelInfo
from ftray.numerics import all_sum, improved, l1_penalty, make_optimizer, make_scheduler
from ftray.redact import redact
from ftray.storage_check import storage  # noqa: F401 - where a run folder lives; also this module's API
from ftray.spec import JobSpec

# Fault injection for tests (`ftray.faults`) is switched on by these variables of the driver's
# environment (the names are `faults.ENVS`); without them that module is never imported.
FAULT_ENVS = ("FTRAY_FAIL_AFTER_EPOCH", "FTRAY_KILL_AT_STEPS", "FTRAY_KILL_IN_CHECKPOINT", "FTRAY_STEP_LOG")


# ==================================================================================== the worker
@dataclass(frozen=True)
class LoopConfig:
    """What the driver hands every worker: the validated spec itself (never validated again) and
    the facts found before Ray started."""
    spec: JobSpec
    info: ModelInfo
    train_rows: int  # training rows over all workers (sizes an epoch, and so the LR schedule)
    started_at: float | None = None  # when `ftray run` started (startup timings); None: not timed
    faults: Any = None  # `ftray.faults.FaultHooks` when a test asks for faults, else None
    progress: Any = None  # the `ftray.progress.Board` rank 0 posts its position to, or None


@dataclass
class TrainState:
    """Where training stands: what a checkpoint's `progress.json` keeps for exact resumption, and
    the facts about the run that the driver puts in `summary.json`."""
    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    best: float | None = None  # best value of the early-stopping metric so far
    bad_epochs: int = 0  # epochs since it last improved
    history: list[dict] = field(default_factory=list)  # every epoch's reported metrics
    resumes: list[dict] = field(default_factory=list)  # {epoch, step} at each resumption
    params: dict | None = None  # {total, trainable} parameter counts
    extra: dict | None = None  # the method's own summary entries (`Method.extra_summary`)
    first_step_s: float | None = None  # seconds from `ftray run` to the first update
    startup: dict | None = None  # where the time to the first step went (set at the first step)

    @classmethod
    def from_dict(cls, record: dict) -> "TrainState":
        return cls(**record)

    def to_dict(self) -> dict:
        return asdict(self)

    def finished(self, spec: JobSpec) -> bool:
        """Whether nothing is left to train: every epoch of `spec` done, or stopped early."""
        return bool(self.history) and (self.epoch >= spec.train.epochs or bool(self.history[-1]["early_stopped"]))


@dataclass
class Worker:
    """Where the one training loop (`fit`) runs: a Ray Train worker, or a packed Tune trial
    (`ftray.sweep`), which trains in its own process so that PBT can exploit its checkpoints."""
    rank: int
    world: int
    device: torch.device
    train_data: Any  # anything with Ray Data's `iter_torch_batches`: a Train shard or a Dataset
    val_data: Any
    resume: Any  # the checkpoint to continue from (Train's or Tune's), or None
    report: Callable[[dict, str | None], None]  # (epoch metrics, checkpoint folder or None)
    # (model, spec, device) -> the module to train: `parallel.wrap` (DDP/FSDP2, compile) in Train.
    wrap: Callable = lambda model, spec, device: model
    # PBT/PB2 restart a trial from another trial's checkpoint with mutated hyperparameters: the
    # trial's spec, not the checkpoint's optimizer state, then decides lr, weight decay, momentum.
    adopt_hyperparameters: bool = False
    # The other datasets a method's `datasets` hook made (fisher rows, an old validation set), by
    # name: a Train worker's shards of them, or in a packed trial the datasets themselves.
    shard: Callable[[str], Any] = ray.train.get_dataset_shard


@dataclass
class Loop:
    """The running loop as a method's hooks see it (`run_epoch`, `validate`, `extra_summary`)."""
    spec: JobSpec
    model: torch.nn.Module  # the model itself, not its DDP/FSDP wrapper
    optimizer: torch.optim.Optimizer
    worker: Worker
    autocast: Any
    step: Callable[[], None]  # one optimizer step on the gradients in `.grad` (clip, schedule, count)

    def data(self, name: str):
        """This worker's part of the dataset `name`: `train`, `val`, or one a method's `datasets` added."""
        if name in ("train", "val"):
            return self.worker.train_data if name == "train" else self.worker.val_data
        return self.worker.shard(name)

    def evaluate(self, model, name: str = "val") -> dict:
        """Loss and task metric of `model` on dataset `name`, over all workers."""
        return evaluate(model, self.data(name), self.spec, self.worker.device, self.autocast)


@dataclass
class Training:
    """One worker's live training: what `setup` built, and the state the loop advances."""
    config: LoopConfig
    worker: Worker
    method: Any  # the spec's `ftray.methods.Method`
    model: torch.nn.Module  # the model itself
    module: torch.nn.Module  # what trains: the model, or its DDP/FSDP/compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any  # a GradScaler under fp16, else None
    autocast: Any
    micro_batch: int  # rows per micro-batch on this worker
    state: TrainState
    startup: dict  # startup timings, recorded into `state` at the first step
    epoch: int = 0  # the epoch being trained
    loop: Loop | None = None  # the view method hooks get (set by `setup`)
    poster: Any = None  # rank 0's `ftray.progress.Poster` when the driver shows progress

    @property
    def spec(self) -> JobSpec:
        return self.config.spec


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: the same code for 1 or N workers, CPU or GPU.
    `config["loop"]` is the driver's `LoopConfig`."""
    import ray.train.torch

    loop_config: LoopConfig = config["loop"]
    ctx = ray.train.get_context()

    def report(metrics: dict, folder: str | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)

    worker = Worker(rank=ctx.get_world_rank(), world=ctx.get_world_size(), device=ray.train.torch.get_device(),
                    train_data=ray.train.get_dataset_shard("train"), val_data=ray.train.get_dataset_shard("val"),
                    resume=resume_checkpoint(loop_config.spec, ray.train.get_checkpoint()),
                    report=report, wrap=parallel.wrap)
    fit(loop_config, worker)


def resume_checkpoint(spec: JobSpec, registered):
    """The checkpoint a (re)started worker group continues from: the newest complete one in the run
    folder, which is Ray Train's latest registered one (`registered`) or newer. Newer happens when a
    worker dies right after reporting: its checkpoint is uploaded, but the controller had not yet
    collected the report, so Ray never registered it and would repeat that epoch."""
    fs, run_dir, _ = storage(spec)
    newest = latest_checkpoint(fs, run_dir)
    return ray.train.Checkpoint(newest, filesystem=fs) if newest else registered


def fit(config: LoopConfig, worker: Worker) -> None:
    """The training loop: set up (or resume), then per epoch train, validate, report, checkpoint."""
    t = setup(config, worker)
    if t.state.finished(t.spec):
        # Resumed with nothing left to train (killed after its last checkpoint, before its summary):
        # report the last epoch again, without a checkpoint, so whoever waits on this run (a Tune
        # trial) gets its metrics; the driver's console and TensorBoard skip it (`Progress`).
        worker.report(t.state.history[-1], None)
        return
    for epoch in range(t.state.epoch + 1, t.spec.train.epochs + 1):
        started = time.perf_counter()
        loss_sum, seen, tokens = train_epoch(t, epoch)
        metrics = end_epoch(t, epoch, started, loss_sum, seen, tokens)
        checkpoint_and_report(t, metrics)
        if config.faults:
            config.faults.after_report(epoch)
        if metrics["early_stopped"]:
            break


def setup(config: LoopConfig, worker: Worker) -> Training:
    """Build the model, its optimizer, LR schedule and grad scaler: from the checkpoint to resume
    if there is one (states restored), else from the spec."""
    spec, device = config.spec, worker.device
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    # Every rank uses the same seed and draws random numbers in lockstep, so rank 0's RNG state (the
    # one the checkpoint keeps) is every rank's state: resumption stays exact with N workers.
    torch.manual_seed(spec.run.seed)
    method = get_method(spec)
    # Where the time to the first step goes (seconds since `ftray run` started), for a fresh start.
    startup = {"worker_started_s": _seconds_since(config.started_at, device)}
    model, trainer_state, state = build_model(config, worker, method)
    method.prepare(model)
    for part in model.frozen_parts():  # the model spec's own freezing holds under every method
        part.requires_grad_(False)
    state.params = {"total": sum(p.numel() for p in model.parameters()),
                    "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    module = worker.wrap(model, spec, device)
    method.attach(device)
    optimizer = make_optimizer(spec, method.param_groups(model))
    startup["model_ready_s"] = _seconds_since(config.started_at, device)
    # An elastic run splits the same global batch over the workers it has now.
    micro_batch = spec.micro_batch_for(worker.world)
    micro_per_epoch = math.ceil(config.train_rows // worker.world / micro_batch)
    scheduler = make_scheduler(spec, optimizer, math.ceil(micro_per_epoch / spec.train.grad_accum_steps))
    scaler = torch.amp.GradScaler("cuda") if spec.train.precision == "fp16" else None
    if trainer_state:
        parallel.load_optimizer_state(module, optimizer, trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        if scaler and trainer_state["scaler"]:
            scaler.load_state_dict(trainer_state["scaler"])
        checkpoint.set_rng_state(trainer_state["rng"])
        if worker.adopt_hyperparameters:
            adopt_hyperparameters(optimizer, scheduler, make_optimizer(spec, method.param_groups(model)))
    t = Training(config, worker, method, model, module, optimizer, scheduler, scaler, _autocast(spec, device),
                 micro_batch, state, startup)
    t.loop = Loop(spec, model, optimizer, worker, t.autocast, lambda: optimizer_step(t))
    if config.progress is not None and worker.rank == 0:
        from ftray.progress import Poster
        t.poster = Poster(config.progress, spec.train.epochs, micro_per_epoch, worker.world,
                          every_s=min(0.5, spec.run.progress_every_s / 2))
    if t.state.extra is None:
        t.state.extra = method.extra_summary(t.loop)
    return t


def build_model(config: LoopConfig, worker: Worker, method) -> tuple[torch.nn.Module, dict | None, TrainState]:
    """(model, trainer state or None, training state): from the checkpoint to resume, else new."""
    if not worker.resume:
        with parallel.build_place(config.spec, worker.device, worker.world):
            return method.build(config.info, None), None, TrainState()
    with worker.resume.as_directory() as d, parallel.build_place(config.spec, worker.device, worker.world):
        model = method.build(config.info, Path(d))
        trainer_state = checkpoint.load_trainer_state(Path(d))
        state = TrainState.from_dict(checkpoint.load_progress(Path(d)))
    state.resumes.append({"epoch": state.epoch, "step": state.step})
    return model, trainer_state, state


def _autocast(spec: JobSpec, device: torch.device):
    if spec.train.precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if spec.train.precision == "bf16" else torch.float16)


def train_epoch(t: Training, epoch: int) -> tuple[Any, int, int]:
    """One pass over this worker's shard (or the method's own epoch): (loss sum, rows, tokens)."""
    t.epoch = epoch
    t.module.train()
    t.method.train_mode(t.model)
    for part in t.model.frozen_parts():
        part.eval()
    if t.worker.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(t.worker.device)
    own = t.method.run_epoch(t.loop, epoch)  # a method with its own epoch (meta-learning), or None
    if own:
        return own[0], own[1], 0
    spec, accum = t.spec, t.spec.train.grad_accum_steps
    batches = t.worker.train_data.iter_torch_batches(
        batch_size=t.micro_batch, device=t.worker.device, drop_last=spec.train.compile,
        local_shuffle_buffer_size=spec.data.shuffle_buffer or None,
        local_shuffle_seed=spec.run.seed * 100003 + epoch if spec.data.shuffle_buffer else None)
    loss_sum, seen, micro, tokens = 0.0, 0, 0, 0
    if t.poster:
        t.poster.start_epoch()
    for batch in batches:
        micro += 1
        sync = micro % accum == 0
        loss = backward(t, batch, sync)
        n = len(next(iter(batch.values())))
        loss_sum, seen = loss_sum + loss * n, seen + n
        tokens += batch_tokens(batch)
        if sync:
            optimizer_step(t)
        if t.poster:
            t.poster.tick(epoch, micro, seen, tokens, loss_sum)
    if micro % accum:  # the epoch ended inside an accumulation window
        optimizer_step(t)
    return loss_sum, seen, tokens


def backward(t: Training, batch: dict, sync: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch (gradients synced across workers if `sync`); its loss."""
    accum, l1 = t.spec.train.grad_accum_steps, t.spec.train.l1
    with parallel.grad_sync(t.module, sync), t.autocast:
        loss, _ = t.method.loss(t.module, batch)
        total = loss / accum
        if l1:
            total = total + l1 * l1_penalty(t.model).to(total.device) / accum
    (t.scaler.scale(total) if t.scaler else total).backward()
    return loss.detach()


def optimizer_step(t: Training) -> None:
    """One optimizer step on the accumulated gradients, counted (and seen by test fault hooks)."""
    _optimizer_step(t.spec, t.model, t.optimizer, t.scheduler, t.scaler)
    t.state.step += 1
    if t.config.faults:
        t.config.faults.after_step(t.state, t.epoch, t.worker.rank, t.worker.world)
    if t.state.startup is None:  # the first update of the run: time from `ftray run` to it
        t.state.first_step_s = _seconds_since(t.config.started_at, t.worker.device)
        t.state.startup = t.startup


def batch_tokens(batch: dict) -> int:
    """Token positions a batch feeds the model: every `input_ids` column (a preference pair's
    `chosen_input_ids` and `rejected_input_ids` both count); 0 for rows of features."""
    return sum(v.numel() for k, v in batch.items() if k == "input_ids" or k.endswith("_input_ids"))


def end_epoch(t: Training, epoch: int, started: float, loss_sum, seen: int, tokens: int) -> dict:
    """Sum the epoch over all workers, validate, step a plateau schedule, apply early stopping and
    record the epoch in the state; returns the epoch's metrics."""
    device = t.worker.device
    loss_total, seen_total, tokens_total = all_sum([float(loss_sum), seen, tokens], device)
    train_time = time.perf_counter() - started  # all_sum waited for the last step's kernels
    metrics = {"epoch": epoch, "step": t.state.step, "workers": t.worker.world,
               "train_loss": loss_total / max(1, seen_total), **t.method.epoch_metrics(t.loop)}
    metrics.update(t.method.validate(t.loop, t.module))
    if t.spec.train.schedule.name == "plateau":
        t.scheduler.step(metrics["val_loss"])
    elapsed = time.perf_counter() - started
    metrics.update(lr=t.optimizer.param_groups[0]["lr"], epoch_time_s=elapsed,
                   samples_per_s=seen_total / elapsed, train_time_s=train_time)
    if tokens_total:  # padding included (with `data.packing`, only what is left at rows' ends)
        metrics["tokens_per_s"] = tokens_total / train_time
    if device.type == "cuda":
        metrics["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    es, state = t.spec.train.early_stopping, t.state
    if improved(metrics[es.metric], state.best, es.mode, es.min_delta):
        state.best, state.bad_epochs = metrics[es.metric], 0
    else:
        state.bad_epochs += 1
    metrics["early_stopped"] = bool(es.patience) and state.bad_epochs >= es.patience
    state.epoch = epoch
    state.history.append(metrics)
    state.extra = t.method.epoch_summary(state.extra, metrics)
    return metrics


def checkpoint_and_report(t: Training, metrics: dict) -> None:
    """Every rank reports the epoch (a barrier); rank 0 brings the checkpoint. Under FSDP every
    rank takes part in gathering the full state; rank 0 writes it."""
    whole, optimizer_state = parallel.full_states(t.model, t.optimizer, lambda: t.method.build(t.config.info, None))
    faults = t.config.faults
    with tempfile.TemporaryDirectory() as tmp:
        if t.worker.rank == 0:
            checkpoint.save(Path(tmp), whole, optimizer_state, t.scheduler, t.scaler, t.state.to_dict(),
                            resume.recorded_spec(t.spec), kill_midway=bool(faults and faults.kill_in_write(t.state)))
        t.worker.report(metrics, tmp if t.worker.rank == 0 else None)


def adopt_hyperparameters(optimizer, scheduler, fresh) -> None:
    """Give a resumed optimizer the hyperparameters of `fresh` (the same optimizer built from the
    current spec), keeping its state (moments) and the schedule's progress: the LR keeps its
    position in the schedule, rescaled to the new peak."""
    if type(fresh) is not type(optimizer):
        raise ValueError("PBT/PB2 cannot change the optimizer of a running trial")
    for group, new in zip(optimizer.param_groups, fresh.param_groups):
        scale = new["lr"] / group.get("initial_lr", group["lr"])
        group.update({k: v for k, v in new.items() if k not in ("params", "lr", "initial_lr")})
        group["lr"] *= scale
        if "initial_lr" in group:
            group["initial_lr"] = new["lr"]
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]


def _seconds_since(started_at: float | None, device) -> float | None:
    """Wall seconds from `started_at` (the driver process's start) to the end of the device's
    queued work; None when the caller gave no start time."""
    if started_at is None:
        return None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return round(time.time() - started_at, 3)


def _optimizer_step(spec, model, optimizer, scheduler, scaler) -> None:
    if scaler:
        scaler.unscale_(optimizer)
    if spec.train.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                       spec.train.grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if spec.train.schedule.name != "plateau":
        scheduler.step()


@torch.no_grad()
def evaluate(model, shard, spec: JobSpec, device, autocast) -> dict:
    """Validation loss and the task metric, summed exactly over all workers' shards."""
    from ftray.methods.base import task_loss
    model.eval()
    task = spec.data.task
    loss_sum, hits, count = 0.0, 0.0, 0.0
    for batch in shard.iter_torch_batches(batch_size=spec.micro_batch_size, device=device):
        with autocast:
            out = model(batch)
        loss_sum += float(task_loss(task, out, batch, reduction="sum"))
        if task == "classification":
            hits += float((out.argmax(-1) == batch["y"]).sum())
            count += len(batch["y"])
        elif task == "regression":
            count += len(batch["y"])
        else:
            count += float((batch["labels"][:, 1:out.shape[1]] != -100).sum())
    loss_sum, hits, count = all_sum([loss_sum, hits, count], device)
    val_loss = loss_sum / max(1.0, count)
    metrics = {"val_loss": val_loss}
    if task == "classification":
        metrics["val_accuracy"] = hits / max(1.0, count)
    elif task == "regression":
        metrics["val_mse"] = val_loss
    else:
        metrics["val_perplexity"] = math.exp(min(val_loss, 50.0))
    return metrics


# ==================================================================================== the driver
class Progress(ray.train.UserCallback):
    """Ray Train callback (runs in the controller, on the driver's node): a console line and
    TensorBoard scalars per epoch. A report without a checkpoint is no new epoch: a finished run
    resumed reports its last epoch once more for a waiting Tune trial (`fit`)."""

    def __init__(self, epochs: int, tensorboard_dir: str, task_metric: str, board=None):
        self.epochs, self.tensorboard_dir, self.task_metric = epochs, tensorboard_dir, task_metric
        self.board = board  # `progress.Board`: the driver prints our line (no Ray log prefix)
        self.writer = None

    def after_report(self, run_context, metrics, checkpoint):
        if checkpoint is None:
            return
        m = metrics[0]
        line = (f"[ftray] epoch {m['epoch']}/{self.epochs}  train_loss {m['train_loss']:.4f}  "
                f"val_loss {m['val_loss']:.4f}  {self.task_metric} {m[self.task_metric]:.4f}  "
                f"lr {m['lr']:.2e}  {m['epoch_time_s']:.1f}s  {m['samples_per_s']:.0f} samples/s")
        if not self._said(line):
            print(line, flush=True)
        if self.writer is None:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(self.tensorboard_dir)
        for key, value in m.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(key, value, m["epoch"])
        # tensorboardX queues events for a writer thread that `flush` does not wait for, and the
        # controller ends without closing us: only `close` drains the queue (the last epoch, else lost).
        if m["epoch"] >= self.epochs or m.get("early_stopped"):
            self.writer.close()
        else:
            self.writer.flush()

    def _said(self, line: str) -> bool:
        """Put the line on the board, waited on: it is there before the run can end and the
        driver's last look. A board that is gone (or slow) is cosmetic: the line is printed instead."""
        if self.board is None:
            return False
        try:
            ray.get(self.board.say.remote(line), timeout=30)
            return True
        except Exception:  # noqa: BLE001 - the console must never fail the run
            self.board = None
            return False

    def after_exception(self, run_context, worker_exceptions):
        if self.writer is not None:
            self.writer.close()  # a later report (a restarted worker group) opens a new events file


def prepare(spec: JobSpec, address: str | None = None) -> data.DataPlan:
    """All checks that need no Ray: data, model source, devices or cluster storage. Raises SpecError."""
    plan = data.inspect(spec)
    method = get_method(spec)
    method.check_source(plan.info)
    if spec.model.name == "hf":
        from ftray.models.hf import resolve_source
        data.check_lengths(spec, plan, resolve_source(spec))
    method.check(plan.info)
    ray_context.check_target(spec, address)
    return plan


def fault_hooks():
    """Test fault injection (`ftray.faults`) when the environment asks for it, else None."""
    if not any(os.environ.get(name) for name in FAULT_ENVS):
        return None
    from ftray.faults import FaultHooks
    return FaultHooks.from_env()


def run(spec: JobSpec, address: str | None = None, plan: data.DataPlan | None = None,
        callbacks: list = ()) -> tuple[int, str]:
    """Fine-tune `spec` and write its run folder. Returns (exit status, run folder).

    Re-running a run name resumes its latest checkpoint if the spec allows it (`ftray.resume`:
    SpecError otherwise); one with nothing left to train returns at once, its folder as it was.
    `callbacks` are more Ray Train callbacks (a sweep trial passes Tune's TuneReportCallback): such
    a caller waits on the run's reports, so a finished run still goes through Ray Train, which
    reports its last epoch once more instead of training."""
    t0 = time.perf_counter()
    started_at = psutil.Process().create_time()  # the start of `ftray run` (this process)
    plan = plan or prepare(spec, address)
    checked_s = round(time.time() - started_at, 3)
    fs, run_dir, storage_path = storage(spec)
    folder = run_dir if isinstance(fs, pafs.LocalFileSystem) else f"{spec.run.storage_path.rstrip('/')}/{spec.run.name}"
    if check_rerun(spec, fs, run_dir) and not callbacks:
        return 0, folder
    fs.create_dir(run_dir, recursive=True)
    local = isinstance(fs, pafs.LocalFileSystem)
    local_tb = run_dir if local else tempfile.mkdtemp(prefix="ftray-tb-")
    trial = bool(callbacks)  # before tracking's callbacks join them
    tracked = tracking.start_run(spec, Path(run_dir) if local else None)
    if tracked:
        callbacks = [*callbacks, tracking.EpochLogger(tracking.target(spec), tracked)]
    wandb_run = tracking_wandb.start_run(spec, Path(run_dir) if local else None)
    if wandb_run:
        callbacks = [*callbacks, tracking_wandb.EpochLogger(wandb_run, spec.train.epochs)]
    with ray_context.use_ray(spec, address) as ray_mode:
        t_ray = time.perf_counter()
        ray.data.DataContext.get_current().enable_progress_bars = False
        datasets, rows = get_method(spec).inputs(plan)
        data_ready_s = round(time.time() - started_at, 3)
        # A sweep's trial leaves the console to the sweep; `--quiet` prints no progress.
        board = progress.board() if not trial and ray_context.console() != "quiet" else None
        callback = Progress(spec.train.epochs, f"{local_tb}/tensorboard", spec.validation_metrics[0], board)
        live = board if spec.run.progress_every_s else None
        config = LoopConfig(spec, plan.info, rows["train"], started_at, fault_hooks(), live)
        with (progress.Display(board, spec.run.progress_every_s, positions=live is not None) if board
              else nullcontext()):
            error = fit_on_ray(trainer(spec, config, datasets, storage_path, [callback, *callbacks]))
        t_fit = time.perf_counter()
        if local and not ray_context.forwarding_logs():  # the console did not show them
            ray_context.keep_logs(Path(run_dir) / "logs")
    if local_tb != run_dir:
        pafs.copy_files(local_tb, run_dir, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    timings = {"ray_start_s": round(t_ray - t0, 3), "fit_s": round(t_fit - t_ray, 3), "checked_s": checked_s,
               "data_ready_s": data_ready_s}
    summary = write_run_folder(spec, plan, fs, run_dir, error, rows, ray_mode, timings)
    summary["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    _write_bytes(fs, f"{run_dir}/summary.json", json.dumps(redact(summary), indent=2).encode())
    tracking.finish(spec, tracked, summary, Path(run_dir) if local else None)
    tracking_wandb.finish(wandb_run, summary, Path(run_dir) if local else None)
    return (1 if error else 0), folder


def check_rerun(spec: JobSpec, fs: pafs.FileSystem, run_dir: str) -> bool:
    """The resume contract for a re-run of `spec`'s name (`ftray.resume`): SpecError when its
    checkpoint was made from a spec it cannot resume; True when nothing is left to train and the
    run folder's summary is that of its last checkpoint (the run is done)."""
    ckpt = latest_checkpoint(fs, run_dir)
    if ckpt is None:
        return False
    resume.check_resume(resume.read_spec(fs, ckpt, run_dir), spec, _location(spec, ckpt))
    state = TrainState.from_dict(_read_json(fs, f"{ckpt}/{checkpoint.PROGRESS}"))
    if not state.finished(spec):
        return False
    try:
        summary = _read_json(fs, f"{run_dir}/summary.json")
    except (OSError, ValueError):
        summary = {}  # killed after its last checkpoint, before its summary
    how = (f"stopped early after epoch {state.epoch}" if state.history[-1]["early_stopped"]
           else f"{state.epoch} epochs done, train.epochs is {spec.train.epochs}")
    return resume.nothing_left_to_train(spec, how, summary, _location(spec, ckpt))


def trainer(spec: JobSpec, config: LoopConfig, datasets: dict, storage_path: str, callbacks: list) -> TorchTrainer:
    """The TorchTrainer of a run: `train_loop` on the spec's workers, checkpoints in the run folder."""
    return TorchTrainer(
        train_loop, train_loop_config={"loop": config},
        scaling_config=ray.train.ScalingConfig(
            num_workers=((spec.scaling.min_workers, spec.scaling.num_workers) if spec.scaling.elastic
                         else spec.scaling.num_workers), use_gpu=spec.scaling.use_gpu,
            resources_per_worker={"CPU": spec.scaling.cpus_per_worker,
                                  **({"GPU": 1} if spec.scaling.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=spec.run.name, storage_path=storage_path, callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.run.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=spec.run.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
        datasets=datasets)


def fit_on_ray(torch_trainer: TorchTrainer) -> str | None:
    """Run Ray Train; the error (one line) if the run failed, else None."""
    try:
        torch_trainer.fit()
    except Exception as e:  # noqa: BLE001 - the run failed; record it, keep the checkpoints
        if not ray_context.forwarding_logs():
            # The workers' own tracebacks did not reach the console: the error carries them.
            traceback.print_exception(e, file=sys.stderr)
        return "".join(traceback.format_exception_only(type(e), e)).strip()
    return None


def write_run_folder(spec: JobSpec, plan: data.DataPlan, fs: pafs.FileSystem, run_dir: str, error: str | None,
                     rows: dict, ray_mode: str, timings: dict) -> dict:
    """Export the model of the newest complete checkpoint, plot the curves; returns the summary.
    That checkpoint, succeeded or failed, is the one the workers went on from, which can be newer
    than Ray's registered one (see `resume_checkpoint`)."""
    ckpt_path = latest_checkpoint(fs, run_dir)
    state = TrainState.from_dict(_read_json(fs, f"{ckpt_path}/{checkpoint.PROGRESS}")) if ckpt_path else TrainState()
    model_dir = None
    if ckpt_path and not error:
        model_dir = f"{run_dir}/model"
        fs.delete_dir_contents(model_dir, missing_dir_ok=True)
        fs.create_dir(model_dir, recursive=True)
        pafs.copy_files(f"{ckpt_path}/{checkpoint.MODEL_DIR}", model_dir, source_filesystem=fs,
                        destination_filesystem=fs)
    if state.history:
        _write_bytes(fs, f"{run_dir}/curves.png", plot_curves(state.history, spec.validation_metrics[0]))
    return {
        "status": "failed" if error else "succeeded",
        "error": error,
        **progress_summary(state.to_dict(), _location(spec, ckpt_path)),
        "best": _best(state.history, spec),
        "model": _location(spec, model_dir),
        "data": {"train_rows": rows["train"], "val_rows": rows["val"], "classes": plan.info.classes},
        "ray": {"mode": ray_mode, "num_workers": spec.scaling.num_workers, "use_gpu": spec.scaling.use_gpu},
        "timings": {**timings, "first_step_s": state.first_step_s, **(state.startup or {})},
        "spec": spec.model_dump(mode="json"),
    }


def progress_summary(progress: dict, ckpt_path: str | None) -> dict:
    """The `summary.json` entries that a checkpoint's progress record (`TrainState.to_dict`;
    empty: no checkpoint) determines."""
    state = TrainState.from_dict(progress)
    return {
        "metrics": {k: v for k, v in (state.history[-1] if state.history else {}).items() if k.startswith("val_")},
        "params": state.params,
        "checkpoint": ckpt_path,
        "epochs_done": state.epoch,
        "steps_done": state.step,
        "resumes": state.resumes,
        "early_stopped": bool(state.history and state.history[-1]["early_stopped"]),
        "history": state.history,
        **(state.extra or {}),
    }


def _location(spec: JobSpec, path: str | None) -> str | None:
    """A path inside the run's filesystem as its user names it: a local path, or on object storage
    a URI (pyarrow's paths there drop the scheme, and `bucket/runs/...` would read as a local path)."""
    if path is None or "://" not in spec.run.storage_path:  # the rule of `storage`
        return path
    return f"{spec.run.storage_path.split('://', 1)[0]}://{path}"


def latest_checkpoint(fs: pafs.FileSystem, run_dir: str) -> str | None:
    """The checkpoint folder with the highest epoch under a run folder (None if there is none)."""
    return checkpoint.latest(fs, run_dir)


def _best(history: list[dict], spec: JobSpec) -> dict | None:
    if not history:
        return None
    es = spec.train.early_stopping
    pick = min if es.mode == "min" else max
    return pick(history, key=lambda m: m[es.metric])


def plot_curves(history: list[dict], task_metric: str) -> bytes:
    from ftray.plots import Panel, curves_png
    epochs = [m["epoch"] for m in history]
    return curves_png([Panel("epoch", "loss", [(epochs, [m["train_loss"] for m in history], "train_loss"),
                                               (epochs, [m["val_loss"] for m in history], "val_loss")]),
                       Panel("epoch", task_metric, [(epochs, [m[task_metric] for m in history], None)])])


def _read_json(fs: pafs.FileSystem, path: str) -> dict:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def _write_bytes(fs: pafs.FileSystem, path: str, payload: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(payload)
