"""What re-running a run name does: the resume contract.

A run folder (`run.storage_path`/`run.name`) with a checkpoint is resumed by running the same name
again. The checkpoint keeps the resolved spec it was made from (`checkpoint.SPEC`); a re-run compares
its own resolved spec with it and

- resumes when only keys of `RESUMABLE` changed: keys that say how long or where to run, not what
  is trained (see the list);
- otherwise refuses (SpecError: exit 2) and names the changed keys: training a 64-unit model from a
  128-unit checkpoint, or a new learning rate under an old optimizer state, would silently give a
  run that is neither the old spec nor the new one. Start afresh with a new `run.name`, or with
  `--restart`, which moves the old folder aside (`move_aside`) and never deletes it.

A run that has nothing left to train (every epoch done, or stopped early) returns at once: see
`ftray.train.run`.
"""

from __future__ import annotations

import json
import time

import pyarrow.fs as pafs
from pydantic import ValidationError

from ftray import checkpoint
from ftray.redact import redact
from ftray.spec import JobSpec, SpecError
from ftray.storage_check import storage

# Keys (or key prefixes) a re-run may change and still resume:
# - train.epochs: more epochs go on training; fewer than done leave nothing to train;
# - train.early_stopping.patience: the counter of epochs without improvement goes on as it was;
# - scaling.num_workers / min_workers / cpus_per_worker / use_gpu: an update depends on the global
#   batch, not on how it is split (tests/test_train.py, test_faults_elastic.py resume elastically),
#   and checkpoints are device-independent full states;
# - run.keep_checkpoints, run.max_failures: how many checkpoints to keep, restarts to allow;
# - run.storage_path: where the folder lives (a run folder copied elsewhere resumes there);
# - run.tracking, run.progress_every_s: where metrics are logged, how often progress is shown;
# - tune: ignored by `ftray run`; serve: read only by `ftray serve`.
# Everything else (model, data, method, optimizer, schedule, precision, seed, scaling.strategy ...)
# decides what is trained: changing it refuses. data.normalize among them: the checkpoint's weights
# were trained on features scaled that way.
RESUMABLE = ("train.epochs", "train.early_stopping.patience", "scaling.num_workers", "scaling.min_workers",
             "scaling.cpus_per_worker", "scaling.use_gpu", "run.keep_checkpoints", "run.max_failures",
             "run.storage_path", "run.tracking", "run.progress_every_s", "tune", "serve")
# An rl run (`ftray.rl`) may change its stop conditions (a later stop goes on training) and how
# many checkpoints it keeps; its rollout and learner settings decide what is trained.
RL_RESUMABLE = ("method.stop", "method.final_episodes", "run.keep_checkpoints", "run.max_failures",
                "run.storage_path", "run.tracking", "run.progress_every_s", "tune", "serve")


def recorded_spec(spec: JobSpec) -> dict:
    """The form in which a spec is kept beside its checkpoints and compared (no secrets)."""
    return redact(spec.model_dump(mode="json"))


def flatten(spec: dict, prefix: str = "") -> dict:
    """A nested spec mapping as {dotted key: value} (lists stay whole values)."""
    flat = {}
    for key, value in spec.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(old: dict, new: dict) -> dict[str, tuple]:
    """{dotted key: (old value, new value)} for every key whose value differs between two nested
    spec mappings; a key only one of them has is "(absent)" in the other."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k, "(absent)"), b.get(k, "(absent)")) for k in sorted(set(a) | set(b))
            if k not in a or k not in b or a[k] != b[k]}


def refused_changes(old: dict, new: dict, resumable: tuple[str, ...] = RESUMABLE) -> dict[str, tuple]:
    """The changes (as `changed_keys`) that a resumed run could not honour: keys under none of `resumable`."""
    return {k: v for k, v in changed_keys(old, new).items()
            if not any(k == r or k.startswith(f"{r}.") for r in resumable)}


def check_resume(old: dict | None, spec: JobSpec, where: str, resumable: tuple[str, ...] = RESUMABLE) -> None:
    """Raise SpecError unless a run of `spec` may resume the checkpoint made from `old` (None: no
    record, as in checkpoints older than this contract: resume). `where` names the checkpoint."""
    if old is None:
        return
    refused = refused_changes(with_defaults(old), recorded_spec(spec), resumable)
    if refused:
        raise SpecError(
            f"run.name: {spec.run.name!r} has a checkpoint ({where}) made from a different spec: "
            f"{', '.join(f'{k} ({a!r} -> {b!r})' for k, (a, b) in refused.items())} changed, and a resumed "
            f"run cannot change "
            f"{'it' if len(refused) == 1 else 'them'}. Start afresh under a new name "
            f"(--set run.name=NEW_NAME), or pass --restart to move the old run folder aside")


def nothing_left_to_train(spec: JobSpec, how: str, summary: dict, checkpoint_location: str) -> bool:
    """A re-run whose last checkpoint finished `spec` (`how` says in what terms): True when the
    run folder's summary is that checkpoint's (the run is done and returns before Ray starts);
    False when it was killed after that checkpoint, before its summary, which the run then writes."""
    done = summary.get("status") == "succeeded" and summary.get("checkpoint") == checkpoint_location
    print(f"[ftray] {spec.run.name}: nothing left to train ({how})"
          + ("" if done else "; writing its summary from its last checkpoint"), flush=True)
    return done


def with_defaults(old: dict) -> dict:
    """A recorded spec with the keys ftray has gained since it was recorded, at their defaults:
    a field added later (say `method.quantize`) is no change to a run that never named it. A
    record this version cannot read (a field since removed) is compared as it is."""
    try:
        return recorded_spec(JobSpec.model_validate(old))
    except ValidationError:
        return old


def read_spec(fs: pafs.FileSystem, ckpt: str, run_dir: str) -> dict | None:
    """The spec checkpoint folder `ckpt` was made from: its own record, else (a checkpoint
    from before the record) the run folder's summary.json's; None when neither holds one."""
    for path in (f"{ckpt}/{checkpoint.SPEC}", f"{run_dir}/summary.json"):
        try:
            with fs.open_input_stream(path) as f:
                record = json.loads(f.read())
        except (OSError, ValueError):
            continue
        return record if path.endswith(checkpoint.SPEC) else record.get("spec")
    return None


def move_aside(fs: pafs.FileSystem, run_dir: str) -> str | None:
    """Move the run folder `run_dir` to a new name beside it (`<name>.old-<UTC time>`) and return
    that name; None if there is no folder. Nothing is deleted (object stores, which cannot rename
    a folder, get a copy before the original goes)."""
    if fs.get_file_info(run_dir).type != pafs.FileType.Directory:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside, n = f"{run_dir}.old-{stamp}", 1
    while fs.get_file_info(aside).type != pafs.FileType.NotFound:
        aside, n = f"{run_dir}.old-{stamp}-{n}", n + 1
    try:
        fs.move(run_dir, aside)
    except (OSError, NotImplementedError):
        pafs.copy_files(run_dir, aside, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(run_dir)
    return aside


def restart(spec: JobSpec) -> str | None:
    """`--restart`: move the run's existing folder aside (printing where) so the run starts afresh."""
    fs, run_dir, _ = storage(spec)
    aside = move_aside(fs, run_dir)
    if aside:
        where = aside if "://" not in spec.run.storage_path else f"{spec.run.storage_path.split('://')[0]}://{aside}"
        print(f"[ftray] --restart: moved the earlier run folder aside to {where}", flush=True)
    return aside
