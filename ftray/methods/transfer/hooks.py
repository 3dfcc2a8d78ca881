"""`transfer`: freeze the backbone, train a (new) head, optionally unfreeze the top blocks with a
smaller learning rate."""

from ftray.methods.base import Method


class Transfer(Method):
    def prepare(self, model):
        model.requires_grad_(False)
        model.head().requires_grad_(True)
        for block in self._unfrozen_blocks(model):
            block.requires_grad_(True)

    def train_mode(self, model):
        # The frozen backbone computes features as at inference: no dropout noise, no drift of
        # normalisation statistics. Only the head and the unfrozen blocks run in training mode.
        model.eval()
        model.head().train()
        for block in self._unfrozen_blocks(model):
            block.train()

    def param_groups(self, model):
        head = [p for p in model.head().parameters()]
        blocks = [p for b in self._unfrozen_blocks(model) for p in b.parameters()]
        groups = [{"params": head, "lr_scale": 1.0}]
        if blocks:
            groups.append({"params": blocks, "lr_scale": self.spec.method.backbone_lr_scale})
        return groups

    def _unfrozen_blocks(self, model):
        k, blocks = self.spec.method.unfreeze_last, model.blocks()
        if k > len(blocks):
            raise ValueError(f"method.unfreeze_last: {k} blocks asked, the model has {len(blocks)}")
        return blocks[-k:] if k else []


HOOKS = Transfer  # what `MethodConfig.hooks` finds beside the config
