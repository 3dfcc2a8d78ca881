"""The one checkpoint format.

A checkpoint folder holds everything exact resumption needs:
- `model/`: the model in its export format (what `ftray.models.load_exported` reads), so the
  latest checkpoint is always a usable model and the final export is a plain copy;
- `trainer_state.pt`: optimizer, LR scheduler, grad scaler and RNG states (tensors and plain
  values only: it loads with `torch.load(weights_only=True)`);
- `progress.json`: epoch, optimizer step, early-stopping state, per-epoch history, and facts
  about the run (parameter counts, resumptions) that the driver puts in `summary.json`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

MODEL_DIR = "model"
STATE = "trainer_state.pt"
PROGRESS = "progress.json"


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


def save(folder: Path, model, optimizer, scheduler, scaler, progress: dict) -> None:
    """Write a complete checkpoint into `folder` (an empty local directory)."""
    model.export(folder / MODEL_DIR)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else None, "rng": rng_state()},
               folder / STATE)
    (folder / PROGRESS).write_text(json.dumps(progress, indent=2))


def load_trainer_state(folder: Path) -> dict:
    return torch.load(folder / STATE, map_location="cpu", weights_only=True)


def load_progress(folder: Path) -> dict:
    return json.loads((folder / PROGRESS).read_text())
