"""`ftray run`: one job spec, fine-tuned data-parallel with Ray Train.

Read top to bottom: the driver checks everything it can before Ray starts (spec, data, model
source, devices), starts or joins Ray, runs a TorchTrainer whose workers execute `train_loop`,
then exports the model and writes the run folder (`summary.json`, `model/`, `curves.png`,
TensorBoard events). The worker loop is the one training loop every method plugs into.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psutil
import pyarrow.fs as pafs
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from ftray import checkpoint, data, parallel, storage_check
from ftray.methods import get_method
from ftray.models import ModelInfo
from ftray.numerics import all_sum, improved, l1_penalty, make_optimizer, make_scheduler
from ftray.redact import redact
from ftray.spec import TASK_METRICS, JobSpec, SpecError

WORKER_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
# Test hook for fault injection: the worker raises after reporting this epoch's checkpoint.
FAIL_AFTER_EPOCH_ENV = "FTRAY_FAIL_AFTER_EPOCH"
# Fault injection for tests/test_faults.py (see FaultHooks), read from the driver's environment.
KILL_AT_STEPS_ENV = "FTRAY_KILL_AT_STEPS"  # "7,15,23": SIGKILL the last rank right after these steps
KILL_IN_CHECKPOINT_ENV = "FTRAY_KILL_IN_CHECKPOINT"  # an epoch: rank 0 dies halfway through its checkpoint
STEP_LOG_ENV = "FTRAY_STEP_LOG"  # a file: rank 0 appends one JSON line per optimizer step


@dataclass(frozen=True)
class FaultHooks:
    """Real faults injected into a run's workers, each firing once. Attempts of a run are counted
    by its resumptions from checkpoints: the i-th of `kill_at_steps` fires in attempt i (so an
    attempt must write a checkpoint before its kill, or the next one counts as the same attempt),
    the checkpoint-write kill in the first attempt. `step_log` records every optimizer step, to prove none was skipped or repeated."""
    kill_at_steps: tuple[int, ...] = ()
    kill_in_checkpoint: int | None = None
    step_log: str | None = None

    @classmethod
    def from_env(cls) -> "FaultHooks":
        steps, epoch = os.environ.get(KILL_AT_STEPS_ENV, ""), os.environ.get(KILL_IN_CHECKPOINT_ENV)
        return cls(tuple(int(s) for s in steps.split(",") if s.strip()), int(epoch) if epoch else None,
                   os.environ.get(STEP_LOG_ENV) or None)

    def after_step(self, progress: dict, epoch: int, rank: int, world: int) -> None:
        attempt = len(progress["resumes"])
        if self.step_log and rank == 0:
            with open(self.step_log, "a") as f:
                f.write(json.dumps({"attempt": attempt, "epoch": epoch, "step": progress["step"],
                                    "workers": world}) + "\n")
        if rank == world - 1 and attempt < len(self.kill_at_steps) and \
                progress["step"] == self.kill_at_steps[attempt]:
            os.kill(os.getpid(), signal.SIGKILL)

    def kill_in_write(self, progress: dict) -> bool:
        return self.kill_in_checkpoint == progress["epoch"] and not progress["resumes"]


# ==================================================================================== the worker
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


def train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: the same code for 1 or N workers, CPU or GPU."""
    import ray.train.torch

    ctx = ray.train.get_context()

    def report(metrics: dict, folder: str | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)

    fit(config, Worker(rank=ctx.get_world_rank(), world=ctx.get_world_size(), device=ray.train.torch.get_device(),
                       train_data=ray.train.get_dataset_shard("train"), val_data=ray.train.get_dataset_shard("val"),
                       resume=resume_checkpoint(JobSpec.model_validate(config["spec"]), ray.train.get_checkpoint()),
                       report=report, wrap=parallel.wrap))


def resume_checkpoint(spec: JobSpec, registered):
    """The checkpoint a (re)started worker group continues from: the newest complete one in the run
    folder, which is Ray Train's latest registered one (`registered`) or newer. Newer happens when a
    worker dies right after reporting: its checkpoint is uploaded, but the controller had not yet
    collected the report, so Ray never registered it and would repeat that epoch."""
    fs, run_dir, _ = storage(spec)
    newest = latest_checkpoint(fs, run_dir)
    return ray.train.Checkpoint(newest, filesystem=fs) if newest else registered


def fit(config: dict, worker: Worker) -> None:
    """The training loop: set up (or resume), then per epoch train, validate, report, checkpoint."""
    spec = JobSpec.model_validate(config["spec"])
    info = ModelInfo(**config["info"])
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    rank, world, device = worker.rank, worker.world, worker.device

    # Set up: the model from the latest checkpoint if there is one, else from the spec. Every rank
    # uses the same seed and draws random numbers in lockstep, so rank 0's RNG state (the one the
    # checkpoint keeps) is every rank's state: resumption stays exact with N workers.
    torch.manual_seed(spec.run.seed)
    method = get_method(spec)
    resume = worker.resume
    progress = {"epoch": 0, "step": 0, "best": None, "bad_epochs": 0, "history": [], "resumes": []}
    # Where the time to the first step goes (seconds since `ftray run` started), for a fresh start.
    startup = {"worker_started_s": _seconds_since(config.get("started_at"), device)}
    trainer_state = None
    if resume:
        with resume.as_directory() as d, parallel.build_place(spec, device, world):
            model = method.build(info, Path(d))
            trainer_state = checkpoint.load_trainer_state(Path(d))
            progress = checkpoint.load_progress(Path(d))
        progress["resumes"].append({"epoch": progress["epoch"], "step": progress["step"]})
    else:
        with parallel.build_place(spec, device, world):
            model = method.build(info, None)
    method.prepare(model)
    for part in model.frozen_parts():  # the model spec's own freezing holds under every method
        part.requires_grad_(False)
    progress["params"] = {"total": sum(p.numel() for p in model.parameters()),
                          "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    ddp_model = worker.wrap(model, spec, device)
    method.attach(device)
    optimizer = make_optimizer(spec, method.param_groups(model))
    startup["model_ready_s"] = _seconds_since(config.get("started_at"), device)
    rows_per_worker = config["train_rows"] // world
    # An elastic run splits the same global batch over the workers it has now.
    micro_batch = spec.micro_batch_for(world)
    micro_per_epoch = math.ceil(rows_per_worker / micro_batch)
    steps_per_epoch = math.ceil(micro_per_epoch / spec.train.grad_accum_steps)
    scheduler = make_scheduler(spec, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if spec.train.precision == "fp16" else None
    if trainer_state:
        parallel.load_optimizer_state(ddp_model, optimizer, trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        if scaler and trainer_state["scaler"]:
            scaler.load_state_dict(trainer_state["scaler"])
        checkpoint.set_rng_state(trainer_state["rng"])
        if worker.adopt_hyperparameters:
            adopt_hyperparameters(optimizer, scheduler, make_optimizer(spec, method.param_groups(model)))

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if spec.train.precision == "bf16"
                               else torch.float16) if spec.train.precision != "fp32" else nullcontext())
    train_shard = worker.train_data
    accum = spec.train.grad_accum_steps
    faults = config.get("faults") or FaultHooks()

    def step() -> None:
        _optimizer_step(spec, model, optimizer, scheduler, scaler)
        progress["step"] += 1
        faults.after_step(progress, epoch, rank, world)
        if "first_step_s" not in progress:  # time from `ftray run` to the first update
            progress["first_step_s"] = _seconds_since(config.get("started_at"), device)
            progress["startup"] = startup

    loop = Loop(spec, model, optimizer, worker, autocast, step)
    if "extra" not in progress:
        progress["extra"] = method.extra_summary(loop)
    fail_after = config.get("fail_after_epoch")

    # Fit: one pass over this worker's shard per epoch, then validation, report and checkpoint.
    history = progress["history"]
    if history and (progress["epoch"] >= spec.train.epochs or history[-1].get("early_stopped")):
        # Resumed with nothing left to train (killed after its last checkpoint, before its summary):
        # report the last epoch again, so whoever waits on this run (a Tune trial) gets its metrics.
        worker.report(history[-1], None)
        return
    for epoch in range(progress["epoch"] + 1, spec.train.epochs + 1):
        started = time.perf_counter()
        ddp_model.train()
        method.train_mode(model)
        for part in model.frozen_parts():
            part.eval()
        loss_sum, seen, micro, tokens = 0.0, 0, 0, 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        own = method.run_epoch(loop, epoch)  # a method with its own epoch (meta-learning), or None
        batches = [] if own else train_shard.iter_torch_batches(
            batch_size=micro_batch, device=device, drop_last=spec.train.compile,
            local_shuffle_buffer_size=spec.data.shuffle_buffer or None,
            local_shuffle_seed=spec.run.seed * 100003 + epoch if spec.data.shuffle_buffer else None)
        for batch in batches:
            micro += 1
            sync = micro % accum == 0
            with parallel.grad_sync(ddp_model, sync), autocast:
                loss, _ = method.loss(ddp_model, batch)
                total = loss / accum
                if spec.train.l1:
                    total = total + spec.train.l1 * l1_penalty(model).to(total.device) / accum
            (scaler.scale(total) if scaler else total).backward()
            n = len(next(iter(batch.values())))
            loss_sum, seen = loss_sum + loss.detach() * n, seen + n
            tokens += batch["input_ids"].numel() if "input_ids" in batch else 0
            if sync:
                step()
        if micro % accum:  # the epoch ended inside an accumulation window
            step()
        if own:
            loss_sum, seen = own
        loss_total, seen_total, tokens_total = all_sum([float(loss_sum), seen, tokens], device)
        train_time = time.perf_counter() - started  # all_sum waited for the last step's kernels
        metrics = {"epoch": epoch, "step": progress["step"], "workers": world,
                   "train_loss": loss_total / max(1, seen_total)}
        metrics.update(method.validate(loop, ddp_model))
        if spec.train.schedule.name == "plateau":
            scheduler.step(metrics["val_loss"])
        elapsed = time.perf_counter() - started
        metrics.update(lr=optimizer.param_groups[0]["lr"], epoch_time_s=elapsed,
                       samples_per_s=seen_total / elapsed, train_time_s=train_time)
        if tokens_total:  # padding included; with `data.packing` there is none
            metrics["tokens_per_s"] = tokens_total / train_time
        if device.type == "cuda":
            metrics["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

        es = spec.train.early_stopping
        if improved(metrics[es.metric], progress["best"], es.mode, es.min_delta):
            progress["best"], progress["bad_epochs"] = metrics[es.metric], 0
        else:
            progress["bad_epochs"] += 1
        stop = bool(es.patience) and progress["bad_epochs"] >= es.patience
        metrics["early_stopped"] = stop
        progress["epoch"] = epoch
        progress["history"].append(metrics)
        progress["extra"] = method.epoch_summary(progress["extra"], metrics)

        # Report: every rank reports (a barrier); rank 0 brings the checkpoint.
        # Under FSDP every rank takes part in gathering the full state; rank 0 writes it.
        whole, optimizer_state = parallel.full_states(model, optimizer, lambda: method.build(info, None))
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                checkpoint.save(Path(tmp), whole, optimizer_state, scheduler, scaler, progress,
                                kill_midway=faults.kill_in_write(progress))
            worker.report(metrics, tmp if rank == 0 else None)
        if fail_after == epoch:
            raise RuntimeError(f"injected failure after epoch {epoch} ({FAIL_AFTER_EPOCH_ENV})")
        if stop:
            break


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
    TensorBoard scalars per epoch."""

    def __init__(self, epochs: int, tensorboard_dir: str, task_metric: str):
        self.epochs, self.tensorboard_dir, self.task_metric = epochs, tensorboard_dir, task_metric
        self.writer = None

    def after_report(self, run_context, metrics, checkpoint):
        m = metrics[0]
        print(f"[ftray] epoch {m['epoch']}/{self.epochs}  train_loss {m['train_loss']:.4f}  "
              f"val_loss {m['val_loss']:.4f}  {self.task_metric} {m[self.task_metric]:.4f}  "
              f"lr {m['lr']:.2e}  {m['epoch_time_s']:.1f}s  {m['samples_per_s']:.0f} samples/s", flush=True)
        if self.writer is None:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(self.tensorboard_dir)
        for key, value in m.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(key, value, m["epoch"])
        self.writer.flush()


def storage(spec: JobSpec) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, run folder inside it, storage path for Ray) of `run.storage_path`."""
    if "://" in spec.run.storage_path:
        fs, root = pafs.FileSystem.from_uri(spec.run.storage_path)
        return fs, f"{root.rstrip('/')}/{spec.run.name}", spec.run.storage_path
    root = str(Path(spec.run.storage_path).expanduser().resolve())
    return pafs.LocalFileSystem(), f"{root}/{spec.run.name}", root


def check_devices(spec: JobSpec, address: str | None) -> None:
    """On an embedded local Ray, refuse jobs this machine can't run (they would wait forever, or
    start dozens of processes on a few cores)."""
    if address or os.environ.get("RAY_ADDRESS"):
        return
    cores = os.cpu_count() or 1
    if spec.scaling.num_workers > 4 * cores:
        raise SpecError(f"scaling.num_workers: {spec.scaling.num_workers} workers on an embedded local Ray "
                        f"with {cores} CPU cores; lower it or pass --address of a cluster")
    if not spec.scaling.use_gpu:
        return
    have = torch.cuda.device_count()
    if have < spec.scaling.num_workers:
        raise SpecError(f"scaling.use_gpu: {spec.scaling.num_workers} GPU workers asked, this machine "
                        f"has {have} GPU(s); lower scaling.num_workers or pass --address of a cluster")


_started_here = False  # whether this process called ray.init (and so may shut it down)


def stop_ray() -> None:
    """Disconnect from (or stop) the Ray this process started, so that Ray's forwarded worker logs
    end before the caller prints its last line."""
    global _started_here
    if _started_here:
        ray.shutdown()
        _started_here = False


def worker_start_timeout(spec: JobSpec) -> str:
    """Seconds Ray Train's controller waits for a worker group's resources (its placement group)
    before it gives up and sizes the group again (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, when set,
    wins). A fixed-size run has no other size to try: 600 s, for a busy machine that frees an
    earlier run's resources slowly. An elastic run keeps Ray's 60 s: after a node is lost, the
    controller's view of the cluster can be stale and ask for a group the cluster can no longer
    place, and only this timeout sends it back to size a smaller one."""
    return os.environ.get(WORKER_START_TIMEOUT_ENV) or ("60" if spec.scaling.elastic else "600")


def start_ray(spec: JobSpec, address: str | None, cpus: int | None = None) -> str:
    global _started_here
    if ray.is_initialized():
        return "existing"
    _started_here = True
    address = address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"OMP_NUM_THREADS": str(max(1, int(spec.scaling.cpus_per_worker))),
                        "TOKENIZERS_PARALLELISM": "false",
                        WORKER_START_TIMEOUT_ENV: worker_start_timeout(spec)}}
    if address:
        # Inside `ray job submit` the job's own runtime env applies to every worker, and Ray refuses
        # to merge a second one into it: join without ours.
        in_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
        ray.init(address=address, runtime_env=None if in_job else env, log_to_driver=True)
        return address
    # Logical CPUs: room for every worker plus Ray Data's read and preprocessing tasks, even on a
    # machine with fewer cores (oversubscribed, but it never deadlocks waiting for a slot).
    need = cpus or math.ceil(spec.scaling.num_workers * spec.scaling.cpus_per_worker) + 1
    ray.init(num_cpus=max(os.cpu_count() or 1, need), dashboard_host="127.0.0.1", runtime_env=env)
    return "local"


def prepare(spec: JobSpec, address: str | None = None) -> data.DataPlan:
    """All checks that need no Ray: data, model source, devices. Raises SpecError."""
    plan = data.inspect(spec)
    method = get_method(spec)
    method.check_source(plan.info)
    if spec.model.name == "hf":
        from ftray.models.hf import resolve_source
        data.check_lengths(spec, plan, resolve_source(spec))
    method.check(plan.info)
    check_devices(spec, address)
    storage_check.check_storage(spec, address)
    return plan


def run(spec: JobSpec, address: str | None = None, plan: data.DataPlan | None = None,
        callbacks: list = ()) -> tuple[int, str]:
    """Fine-tune `spec` and write its run folder. Returns (exit status, run folder).

    `callbacks` are more Ray Train callbacks (a sweep trial passes Tune's TuneReportCallback)."""
    t0 = time.perf_counter()
    started_at = psutil.Process().create_time()  # the start of `ftray run` (this process)
    plan = plan or prepare(spec, address)
    checked_s = round(time.time() - started_at, 3)
    fs, run_dir, storage_path = storage(spec)
    fs.create_dir(run_dir, recursive=True)

    ray_mode = start_ray(spec, address)
    t_ray = time.perf_counter()
    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets, rows = get_method(spec).datasets(plan, *data.ray_datasets(spec, plan))
    data_ready_s = round(time.time() - started_at, 3)
    local_tb = run_dir if isinstance(fs, pafs.LocalFileSystem) else tempfile.mkdtemp(prefix="ftray-tb-")
    callback = Progress(spec.train.epochs, f"{local_tb}/tensorboard", TASK_METRICS[spec.data.task])
    fail_after = os.environ.get(FAIL_AFTER_EPOCH_ENV)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "info": plan.info.to_dict(),
                           "train_rows": rows["train"], "started_at": started_at,
                           "fail_after_epoch": int(fail_after) if fail_after else None,
                           "faults": FaultHooks.from_env()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=((spec.scaling.min_workers, spec.scaling.num_workers) if spec.scaling.elastic
                         else spec.scaling.num_workers), use_gpu=spec.scaling.use_gpu,
            resources_per_worker={"CPU": spec.scaling.cpus_per_worker,
                                  **({"GPU": 1} if spec.scaling.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=spec.run.name, storage_path=storage_path, callbacks=[callback, *callbacks],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.run.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=spec.run.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
        datasets=datasets,
    )
    error = None
    try:
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - the run failed; record it, keep the checkpoints
        error = "".join(traceback.format_exception_only(type(e), e)).strip()
    # The newest complete checkpoint in the folder, succeeded or failed: the one the workers went on
    # from, which can be newer than Ray's registered one (see `resume_checkpoint`).
    ckpt_path = latest_checkpoint(fs, run_dir)
    t_fit = time.perf_counter()

    progress = _read_json(fs, f"{ckpt_path}/{checkpoint.PROGRESS}") if ckpt_path else {}
    history = progress.get("history", [])
    model_dir = None
    if ckpt_path and not error:
        model_dir = f"{run_dir}/model"
        fs.delete_dir_contents(model_dir, missing_dir_ok=True)
        fs.create_dir(model_dir, recursive=True)
        pafs.copy_files(f"{ckpt_path}/{checkpoint.MODEL_DIR}", model_dir, source_filesystem=fs,
                        destination_filesystem=fs)
    if history:
        _write_bytes(fs, f"{run_dir}/curves.png", plot_curves(history, TASK_METRICS[spec.data.task]))
    if local_tb != run_dir:
        pafs.copy_files(local_tb, run_dir, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    summary = {
        "status": "failed" if error else "succeeded",
        "error": error,
        **progress_summary(progress, _location(spec, ckpt_path)),
        "best": _best(history, spec),
        "model": _location(spec, model_dir),
        "data": {"train_rows": rows["train"], "val_rows": rows["val"],
                 "classes": plan.info.classes},
        "ray": {"mode": ray_mode, "num_workers": spec.scaling.num_workers, "use_gpu": spec.scaling.use_gpu},
        "timings": {"total_s": round(time.perf_counter() - t0, 3), "ray_start_s": round(t_ray - t0, 3),
                    "fit_s": round(t_fit - t_ray, 3), "first_step_s": progress.get("first_step_s"),
                    "checked_s": checked_s, "data_ready_s": data_ready_s, **(progress.get("startup") or {})},
        "spec": spec.model_dump(mode="json"),
    }
    summary = redact(summary)  # no token from the environment in the run folder
    _write_bytes(fs, f"{run_dir}/summary.json", json.dumps(summary, indent=2).encode())
    return (1 if error else 0), (run_dir if isinstance(fs, pafs.LocalFileSystem)
                                 else f"{spec.run.storage_path.rstrip('/')}/{spec.run.name}")


def progress_summary(progress: dict, ckpt_path: str | None) -> dict:
    """The `summary.json` entries that a checkpoint's progress record determines."""
    history = progress.get("history", [])
    return {
        "metrics": {k: v for k, v in (history[-1] if history else {}).items() if k.startswith("val_")},
        "params": progress.get("params"),
        "checkpoint": ckpt_path,
        "epochs_done": progress.get("epoch", 0),
        "steps_done": progress.get("step", 0),
        "resumes": progress.get("resumes", []),
        "early_stopped": bool(history and history[-1].get("early_stopped")),
        "history": history,
        **progress.get("extra", {}),
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
