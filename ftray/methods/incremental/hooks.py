"""`incremental`: continue an earlier run (`model.init_from`) on new data without forgetting the old.

Two defences against forgetting, both optional:
- replay: `replay_ratio` old training rows (from `replay_path`) per new row are mixed into every epoch;
- EWC: loss += ewc_lambda / 2 * sum_i F_i * (theta_i - theta_old_i)^2, with F the diagonal
  (empirical) Fisher information of the earlier model on `fisher_rows` old rows, estimated once.

A classifier may learn new classes: `data.classes` (or the inferred 0..K-1) must start with the
earlier model's classes, and the mlp head grows, keeping the old classes' rows. Every epoch is also
validated on `old_val_path` (`old_val_loss`, `old_val_<metric>`), and the summary carries
`continual: {old_before, old_after, new_after, forgetting}` where forgetting is how much the old
task's metric got worse (before - after for accuracy, after - before for MSE / perplexity).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from ftray import data
from ftray.methods.base import Method, task_loss
from ftray.models import build_model, check_model_source, export_config, exported_model_dir, load_exported
from ftray.models.base import ModelInfo
from ftray.schema import SpecError
from ftray.spec.data import TASK_METRICS


class Incremental(Method):
    # ------------------------------------------------------------------------------ the driver
    def check_source(self, info):
        old = self._old_info()
        if old.task != info.task:
            raise SpecError(f"model.init_from: a {old.task} model cannot continue on a {info.task} task")
        if old.classes == info.classes:
            check_model_source(self.spec, info)
            return
        if [str(c) for c in info.classes[:len(old.classes)]] != [str(c) for c in old.classes]:
            raise SpecError(f"data.classes: must start with the earlier model's classes {old.classes} "
                            f"(then the new ones), got {info.classes}")
        if self.spec.model.name != "mlp":
            raise SpecError("model.init_from: new classes (a larger head) are supported for mlp models")
        from ftray.models.mlp import MLP, _mismatch
        d = exported_model_dir(self.spec.model.init_from, "model.init_from")
        saved = {k: tuple(v.shape) for k, v in load_exported(str(d)).state_dict().items()}
        mismatch = _mismatch(MLP(self.spec.model, info), saved, skip_head=True)
        if mismatch:
            raise SpecError(f"model.init_from: {self.spec.model.init_from}: {mismatch}")

    def check(self, info):
        for key in ("replay_path", "old_val_path"):
            where, table = self._read(key)
            if table.num_rows == 0:
                raise SpecError(f"{where}: no rows")
            if self.spec.model.name == "mlp":
                width = data.feature_matrix(table, self.spec.data.features, where).shape[1]
                if width != info.in_features:
                    raise SpecError(f"{where}: {width} feature values per row, training data has {info.in_features}")
            if info.task == "classification":
                with_classes = self.spec.model_copy(update={"data": self.spec.data.model_copy(
                    update={"classes": list(info.classes)})})
                data.label_classes(with_classes, [(where, table)])

    def datasets(self, plan, datasets, rows):
        import ray.data
        m, seed = self.spec.method, self.spec.run.seed
        udf = data.row_transform(self.spec, plan)

        def ds(table):
            return ray.data.from_arrow(table).map_batches(udf, batch_format="pyarrow")

        _, replay = self._read("replay_path")
        rng = np.random.default_rng(seed)
        n = round(m.replay_ratio * rows["train"])
        if n:  # a fixed seeded sample (repeated if the old data is smaller than the share asks)
            sample = replay.take(np.resize(rng.permutation(replay.num_rows), n))
            # Shuffled together so that every stretch of an epoch holds both tasks.
            datasets["train"] = datasets["train"].union(ds(sample)).random_shuffle(seed=seed)
        datasets["fisher"] = ds(replay.take(rng.permutation(replay.num_rows)[:m.fisher_rows]))
        datasets["old_val"] = ds(self._read("old_val_path")[1])
        return datasets, {**rows, "train": rows["train"] + n, "replay": n}

    def _read(self, key: str):
        src = data.resolve(getattr(self.spec.method, key), self.spec.data.format, f"method.{key}")
        return f"method.{key}: {src.uri}", data.read_table(src, data.needed_columns(self.spec))

    def _old_info(self) -> ModelInfo:
        d = exported_model_dir(self.spec.model.init_from, "model.init_from")
        return ModelInfo(**export_config(d, "model.init_from")["info"])

    # ------------------------------------------------------------------------------ the worker
    def build(self, info, checkpoint_dir):
        if checkpoint_dir is not None or self._old_info().classes == info.classes:
            return super().build(info, checkpoint_dir)
        # New classes: a fresh model of the new shape takes every old weight, and the old classes'
        # rows of the head (they come first); the new classes' rows keep their fresh initialisation.
        fresh = self.spec.model_copy(update={"model": self.spec.model.model_copy(update={"init_from": None})})
        model = build_model(fresh, info)
        old = load_exported(self.spec.model.init_from).state_dict()
        with torch.no_grad():
            for name, target in model.state_dict().items():
                target[:old[name].shape[0]].copy_(old[name])
        return model

    def attach(self, device):
        self.old_model = load_exported(self.spec.model.init_from).to(device).eval().requires_grad_(False)
        self.ewc = None  # (parameter, old value, Fisher) triples, estimated at the first epoch

    def extra_summary(self, loop):
        metric = TASK_METRICS[self.spec.data.task]
        return {"continual": {"old_before": loop.evaluate(self.old_model, "old_val")[metric]}}

    def run_epoch(self, loop, epoch):
        if self.ewc is None and self.spec.method.ewc_lambda:
            self.ewc = self._ewc_terms(loop)
        return None  # the shared supervised epoch, with the EWC term in `loss`

    def _ewc_terms(self, loop) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Diagonal empirical Fisher of the earlier model (per-example gradients through torch.func),
        summed over every worker's part of the `fisher` rows."""
        task, old = self.spec.data.task, self.old_model
        anchor = {n: p.detach() for n, p in old.named_parameters()}

        def example_loss(params, example):
            batch = {k: v.unsqueeze(0) for k, v in example.items()}
            return task_loss(task, functional_call(old, params, (batch,)), batch)

        per_example = vmap(grad(example_loss), in_dims=(None, 0))
        fisher = {n: torch.zeros_like(p) for n, p in anchor.items()}
        count = torch.zeros((), dtype=torch.float64, device=loop.worker.device)
        for batch in loop.data("fisher").iter_torch_batches(batch_size=self.spec.micro_batch_size,
                                                            device=loop.worker.device):
            for n, g in per_example(anchor, batch).items():
                fisher[n] += (g ** 2).sum(0)
            count += len(next(iter(batch.values())))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for t in [*fisher.values(), count]:
                torch.distributed.all_reduce(t)
        current = dict(loop.model.named_parameters())
        # A grown head's parameters are longer than the old ones: the old rows come first.
        return [(current[n], anchor[n], fisher[n] / count.clamp(min=1).to(fisher[n].dtype))
                for n in anchor if current[n].requires_grad]

    def loss(self, model, batch):
        out = model(batch)
        loss = task_loss(self.spec.data.task, out, batch)
        if self.ewc:
            penalty = sum((f * (p[:a.shape[0]] - a) ** 2).sum() for p, a, f in self.ewc)
            loss = loss + self.spec.method.ewc_lambda / 2 * penalty
        return loss, out

    def validate(self, loop, model):
        metrics = loop.evaluate(model)
        metrics.update({f"old_{k}": v for k, v in loop.evaluate(model, "old_val").items()})
        return metrics

    def epoch_summary(self, extra, metrics):
        metric = TASK_METRICS[self.spec.data.task]
        before, after = extra["continual"]["old_before"], metrics[f"old_{metric}"]
        worse = before - after if metric == "val_accuracy" else after - before
        return {**extra, "continual": {"old_before": before, "old_after": after, "new_after": metrics[metric],
                                       "forgetting": worse}}


HOOKS = Incremental  # what `MethodConfig.hooks` finds beside the config
