"""`ensemble`: exported models combined by voting, probability averaging or a stacked linear model.

Built by `ftray sweep` from its top trials (`tune.ensemble`); exported like any model (members
under `members/<i>/`, the combination in `ftray_model.json`), so `load_exported` reads it back.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ftray.models.base import EXPORT_CONFIG, FtModel, ModelInfo


class Ensemble(FtModel):
    def __init__(self, members: list[FtModel], combine: str, info: ModelInfo, stacker: dict | None = None):
        super().__init__()
        self.members, self.combine, self.info, self.stacker = nn.ModuleList(members), combine, info, stacker

    def member_outputs(self, batch: dict) -> list[torch.Tensor]:
        return [m(batch) for m in self.members]

    def forward(self, batch: dict) -> torch.Tensor:
        """Log-probabilities for classifiers (argmax is the ensemble's class), the mean for regression."""
        return combine(self.member_outputs(batch), self.combine, self.info.task, self.stacker)

    def export(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, member in enumerate(self.members):
            member.export(out_dir / "members" / str(i))
        (out_dir / EXPORT_CONFIG).write_text(json.dumps(
            {"builder": "ensemble", "info": self.info.to_dict(), "combine": self.combine,
             "members": len(self.members), "stacker": self.stacker}, indent=2))

    @classmethod
    def load(cls, model_dir: Path) -> "Ensemble":
        from ftray.models import load_exported
        cfg = json.loads((model_dir / EXPORT_CONFIG).read_text())
        members = [load_exported(str(model_dir / "members" / str(i))) for i in range(cfg["members"])]
        return cls(members, cfg["combine"], ModelInfo(**cfg["info"]), cfg.get("stacker"))


def combine(outputs: list[torch.Tensor], how: str, task: str, stacker: dict | None = None) -> torch.Tensor:
    if task == "regression":
        return torch.stack(outputs).mean(0)
    probs = torch.stack([o.float().softmax(-1) for o in outputs])  # (members, rows, classes)
    if how == "average":
        return probs.mean(0).log()
    if how == "vote":
        votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).float().mean(0)
        return (votes + 1e-3 * probs.mean(0)).log()  # ties go to the more confident classes
    features = probs.permute(1, 0, 2).reshape(probs.shape[1], -1)  # stack: rows x (members*classes)
    weight = torch.tensor(stacker["coef"], dtype=features.dtype)
    bias = torch.tensor(stacker["intercept"], dtype=features.dtype)
    return (features @ weight.T + bias).log_softmax(-1)
