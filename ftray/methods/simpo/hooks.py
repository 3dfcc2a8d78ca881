"""`simpo`: SimPO (Meng et al., 2024), the reference-free sibling of `dpo`.

Chosen over ORPO because it is DPO with the reference taken out and nothing put in: its reward is
the length-normalized log-prob that `dpo` already computes for `val_logprob_preference`
(`sequence_logps`), so the two share every line but the loss, and it needs neither a reference
pass nor ORPO's extra SFT term and log-odds (log(p / (1 - p)) of a sequence probability near 0,
numerically touchy). Like ORPO it holds no reference model, and its metrics keep their meaning:
the implicit reward is beta times the length-normalized log-prob, so `val_preference_accuracy`
equals `val_logprob_preference`.
"""

from __future__ import annotations

from ftray.methods.dpo.hooks import Preference, simpo_loss


class Simpo(Preference):
    def pair_loss(self, model, batch, logps):
        m = self.spec.method
        return (simpo_loss(m.beta, m.gamma, logps["chosen_mean"], logps["rejected_mean"]),
                m.beta * logps["chosen_mean"], m.beta * logps["rejected_mean"])


HOOKS = Simpo  # what `MethodConfig.hooks` finds beside the config
