"""The one checkpoint format.

A checkpoint folder holds everything exact resumption needs:
- `model/`: the model in its export format (what `ftray.models.load_exported` reads), so the
  latest checkpoint is always a usable model and the final export is a plain copy;
- `trainer_state.pt`: optimizer, LR scheduler, grad scaler and RNG states (tensors and plain
  values only: it loads with `torch.load(weights_only=True)`);
- `spec.json`: the resolved spec the checkpoint was made from (secrets redacted), which a re-run
  compares its own with (`ftray.resume`);
- `progress.json`: epoch, optimizer step, early-stopping state, per-epoch history, and facts
  about the run (parameter counts, resumptions) that the driver puts in `summary.json`;
- `manifest.json`, written last: every other file's size and SHA-256. A folder whose manifest is
  missing or does not match was cut off while being written or copied (a killed worker, a lost
  node) and is never used (`is_complete`).

Ray Train registers a checkpoint only once its upload has finished, so a resumed worker never sees
a partial one; the manifest protects the places that look at checkpoint folders directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import torch

MODEL_DIR = "model"
STATE = "trainer_state.pt"
PROGRESS = "progress.json"
SPEC = "spec.json"
MANIFEST = "manifest.json"


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save(folder: Path, model, optimizer_state: dict, scheduler, scaler, progress: dict, spec: dict,
         kill_midway: bool = False) -> None:
    """Write a complete checkpoint into `folder` (an empty local directory), the manifest last.

    `kill_midway` is fault injection (tests/test_faults.py): the process SIGKILLs itself with the
    model written and the rest not."""
    model.export(folder / MODEL_DIR)
    if kill_midway:
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else None, "rng": rng_state()},
               folder / STATE)
    (folder / SPEC).write_text(json.dumps(spec, indent=2))
    (folder / PROGRESS).write_text(json.dumps(progress, indent=2))
    # Hashing reads the checkpoint once more (~2 GB/s per core): small next to writing it, and it lets
    # `is_complete(deep=True)` prove a kept checkpoint bit-exact.
    manifest = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            with f.open("rb") as stream:
                manifest[str(f.relative_to(folder))] = {"size": f.stat().st_size, "sha256": _sha256(stream)}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": manifest}, indent=2))
    os.replace(tmp, folder / MANIFEST)  # all or nothing: a reader sees no manifest or a whole one


def is_complete(fs, folder: str, deep: bool = False) -> bool:
    """Whether the checkpoint `folder` (a path on the pyarrow filesystem `fs`) holds every file its
    manifest lists, with the listed size (a write or copy cut off leaves a file missing or short)
    and, if `deep`, the listed SHA-256 (reads every byte: costly for large models on object storage)."""
    try:
        with fs.open_input_stream(f"{folder}/{MANIFEST}") as f:
            files = json.loads(f.read())["files"]
        for name, meta in files.items():
            if fs.get_file_info(f"{folder}/{name}").size != meta["size"]:
                return False
            if not deep:
                continue
            with fs.open_input_stream(f"{folder}/{name}") as f:
                if _sha256(f) != meta["sha256"]:
                    return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _sha256(stream) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def load_trainer_state(folder: Path) -> dict:
    return torch.load(folder / STATE, map_location="cpu", weights_only=True)


def load_progress(folder: Path) -> dict:
    return json.loads((folder / PROGRESS).read_text())


def latest(fs, run_dir: str, record: str = PROGRESS, counter: str = "epoch", manifest: bool = True) -> str | None:
    """The `checkpoint_*` folder under `run_dir` (a path on the pyarrow filesystem `fs`) whose
    progress `record` has the highest `counter`, among the finished ones; None if there is none.

    Finished means: its manifest matches (`is_complete`; ftray's own checkpoints), or, with
    `manifest=False` (RLlib's checkpoints, where ftray writes the record last), its record reads."""
    import pyarrow.fs as pafs
    best, best_count = None, -1
    for entry in fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True)):
        if entry.type != pafs.FileType.Directory or not Path(entry.path).name.startswith("checkpoint_"):
            continue
        if manifest and not is_complete(fs, entry.path):
            continue  # a checkpoint whose write or upload was cut off
        try:
            with fs.open_input_stream(f"{entry.path}/{record}") as f:
                count = json.loads(f.read())[counter]
        except (OSError, ValueError, KeyError):
            continue
        if count > best_count:
            best, best_count = entry.path, count
    return best
