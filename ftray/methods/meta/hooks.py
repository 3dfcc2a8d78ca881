"""`meta`: meta-learning over tasks (a `task` column): Reptile or first-order MAML.

Each training row of the Ray Dataset is one whole task, so Ray Train's split hands every worker
different tasks. Per meta-batch (`train.batch_size` tasks over all workers) each worker adapts the
shared start to each of its tasks with `inner_steps` SGD steps on k = `shots` support rows
(vectorised over tasks with torch.func), forms its meta-gradient (Reptile: start - adapted;
first-order MAML: the query-loss gradient at the adapted weights, on k more rows), the workers
average it, and `train.optimizer` takes one step at `train.lr` (the meta learning rate) through
the shared step (clipping, schedule, checkpoints as for every method).

Validation is k-shot adaptation on held-out tasks (`data.val_path`, else a seeded `val_fraction`
of the tasks): `eval_steps` SGD steps on k support rows, then loss and metric on the task's other
rows. The summary's `fewshot` compares the meta-learned start with a baseline start trained jointly
on all training tasks (the same init, optimizer, learning rate and number of steps).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch.func import functional_call, grad, vmap

from ftray import data
from ftray.methods.base import Method, task_loss
from ftray.models import build_model
from ftray.numerics import all_mean_, make_optimizer
from ftray.schema import SpecError
from ftray.spec.data import TASK_METRICS


def task_tables(spec, plan) -> tuple[list[tuple[str, pa.Table]], list[tuple[str, pa.Table]]]:
    """(training, held-out) tasks as (name, rows) pairs, in a deterministic order."""
    col = spec.method.task_column
    train = _by_task(plan.train_table, data.read_table(plan.train, [col]).column(col), f"data.path: {plan.train.uri}")
    if plan.val:
        return train, _by_task(plan.tables[1][1], data.read_table(plan.val, [col]).column(col),
                               f"data.val_path: {plan.val.uri}")
    order = np.random.default_rng(spec.run.seed).permutation(len(train))
    n_val = round(len(train) * spec.data.val_fraction)
    if n_val < 1 or n_val >= len(train):
        raise SpecError(f"data.val_fraction: {spec.data.val_fraction} of {len(train)} tasks leaves no "
                        f"{'held-out' if n_val < 1 else 'training'} tasks")
    held = set(order[:n_val].tolist())
    return ([t for i, t in enumerate(train) if i not in held], [t for i, t in enumerate(train) if i in held])


def _by_task(table: pa.Table, tasks: pa.ChunkedArray, where: str) -> list[tuple[str, pa.Table]]:
    tasks = tasks.combine_chunks()
    if tasks.null_count:
        bad = int(np.flatnonzero(tasks.is_null().to_numpy(zero_copy_only=False))[0])
        raise SpecError(f"{where}: row {bad}: task is empty")
    names = np.array([str(v) for v in tasks.to_pylist()])
    return [(name, table.take(np.flatnonzero(names == name))) for name in sorted(set(names.tolist()))]


class Meta(Method):
    # ------------------------------------------------------------------------------ the driver
    def check(self, info):
        # task_tables needs the plan; `check` runs right after `inspect`, so rebuild it cheaply.
        plan = data.inspect(self.spec)
        k = self.spec.method.shots
        train, held = task_tables(self.spec, plan)
        for tasks, need, why, key in ((train, 2 * k, "k support + k query rows", plan.train),
                                      (held, k + 1, "k support rows and at least one to score", plan.val or plan.train)):
            for name, rows in tasks:
                if rows.num_rows < need:
                    raise SpecError(f"{key.key}: {key.uri}: task {name!r} has {rows.num_rows} rows; method.shots: "
                                    f"{k} needs at least {need} per task ({why})")
        if len(train) < self.spec.scaling.num_workers:
            raise SpecError(f"data.path: {len(train)} training tasks for {self.spec.scaling.num_workers} workers")

    def datasets(self, plan, datasets, rows):
        import ray.data
        udf = data.row_transform(self.spec, plan)
        out = {}
        for name, tasks in zip(("train", "val"), task_tables(self.spec, plan)):
            # One row per task: its model inputs (`x`) and targets (`y`) as arrays.
            out[name] = ray.data.from_items([udf(rows) for _, rows in tasks])
        return out, {"train": out["train"].count(), "val": out["val"].count()}

    # ------------------------------------------------------------------------------ the worker
    def build(self, info, checkpoint_dir):
        self.info = info  # the baseline start is built like the meta start
        return super().build(info, checkpoint_dir)

    def _loss(self, model, params, x, y):
        return task_loss(self.spec.data.task, functional_call(model, params, ({"x": x},)), {"y": y})

    def _adapt(self, model, params, x, y, steps):
        """`steps` plain SGD steps from `params` on one task's rows (first order: no graph kept)."""
        g = grad(lambda p: self._loss(model, p, x, y))
        for _ in range(steps):
            grads = g(params)
            params = {n: params[n] - self.spec.method.inner_lr * grads[n] for n in params}
        return params

    def _batches(self, loop, name, epoch):
        b = self.spec.micro_batch_size  # train.batch_size tasks per meta-batch, split over workers
        shuffle = self.spec.data.shuffle_buffer if name == "train" else 0
        for batch in loop.data(name).iter_batches(
                batch_size=b, batch_format="numpy", local_shuffle_buffer_size=shuffle or None,
                local_shuffle_seed=self.spec.run.seed * 100003 + epoch if shuffle else None):
            yield [(torch.as_tensor(np.asarray(x, np.float32), device=loop.worker.device),
                    torch.as_tensor(np.asarray(y), device=loop.worker.device)) for x, y in zip(batch["x"], batch["y"])]

    def run_epoch(self, loop, epoch):
        m, model = self.spec.method, loop.model
        rank, k = loop.worker.rank, m.shots
        model.train()
        loss_sum, seen = 0.0, 0
        for i, tasks in enumerate(self._batches(loop, "train", epoch)):
            gen = torch.Generator().manual_seed(hash((self.spec.run.seed, epoch, rank, i)) % (1 << 62))
            picks = [torch.randperm(len(y), generator=gen)[:2 * k].to(y.device) for _, y in tasks]
            xs = torch.stack([x[p[:k]] for (x, _), p in zip(tasks, picks)])
            ys = torch.stack([y[p[:k]] for (_, y), p in zip(tasks, picks)])
            xq = torch.stack([x[p[k:]] for (x, _), p in zip(tasks, picks)])
            yq = torch.stack([y[p[k:]] for (_, y), p in zip(tasks, picks)])
            start = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
            adapted = vmap(lambda x, y: self._adapt(model, start, x, y, m.inner_steps), randomness="different")(xs, ys)
            query = vmap(lambda p, x, y: self._loss(model, p, x, y), randomness="different")(adapted, xq, yq)
            if m.algorithm == "reptile":
                meta_grad = {n: start[n] - adapted[n].mean(0) for n in start}
            else:  # first-order MAML: the query gradient at the adapted weights stands in for the start's
                g = vmap(grad(lambda p, x, y: self._loss(model, p, x, y)), randomness="different")(adapted, xq, yq)
                meta_grad = {n: g[n].mean(0) for n in start}
            self._set_mean_grad(model, meta_grad, loop.worker.world)
            loop.step()
            loss_sum, seen = loss_sum + query.sum().detach(), seen + len(tasks)  # no per-step host sync
        return loss_sum, seen

    @staticmethod
    def _set_mean_grad(model, grads: dict, world: int) -> None:
        """Put the meta-gradient, averaged over the workers (each had its own tasks), in `.grad`."""
        means = {n: g.detach().clone() for n, g in grads.items()}
        all_mean_(list(means.values()), world)
        for n, p in model.named_parameters():
            if n in means:
                p.grad = means[n].view_as(p)

    def validate(self, loop, model):
        """k-shot adaptation on every held-out task: loss and metric on its other rows."""
        m, model = self.spec.method, getattr(model, "module", model)
        model.eval()
        start = {n: p.detach() for n, p in model.named_parameters()}
        loss_sum, hits, count = 0.0, 0.0, 0.0
        for tasks in self._batches(loop, "val", 0):
            for x, y in tasks:
                # The same support rows every epoch, so that epochs (and the baseline) compare.
                gen = torch.Generator().manual_seed(self.spec.run.seed)
                order = torch.randperm(len(y), generator=gen).to(y.device)
                support, score = order[:m.shots], order[m.shots:]
                params = self._adapt(model, start, x[support], y[support], m.eval_steps)
                with torch.no_grad():
                    out = functional_call(model, params, ({"x": x[score]},))
                    loss_sum += float(task_loss(self.spec.data.task, out, {"y": y[score]}, reduction="sum"))
                    if self.spec.data.task == "classification":
                        hits += float((out.argmax(-1) == y[score]).sum())
                count += len(score)
        from ftray.numerics import all_sum
        loss_sum, hits, count = all_sum([loss_sum, hits, count], loop.worker.device)
        metrics = {"val_loss": loss_sum / max(1.0, count)}
        if self.spec.data.task == "classification":
            metrics["val_accuracy"] = hits / max(1.0, count)
        else:
            metrics["val_mse"] = metrics["val_loss"]
        return metrics

    def extra_summary(self, loop):
        """The baseline: the same start trained jointly on all training tasks' rows, then k-shot adapted."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.spec.run.seed)
            baseline = build_model(self.spec, self.info).to(loop.worker.device)
        params = [p for p in baseline.parameters()]
        optimizer = make_optimizer(self.spec, [{"params": params, "lr_scale": 1.0}])
        baseline.train()
        for epoch in range(1, self.spec.train.epochs + 1):
            for tasks in self._batches(loop, "train", epoch):
                x, y = torch.cat([x for x, _ in tasks]), torch.cat([y for _, y in tasks])
                loss = task_loss(self.spec.data.task, baseline({"x": x}), {"y": y})
                grads = torch.autograd.grad(loss, params)
                self._set_mean_grad(baseline, dict(zip([n for n, _ in baseline.named_parameters()], grads)),
                                    loop.worker.world)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        metric = TASK_METRICS[self.spec.data.task]
        return {"fewshot": {"metric": metric, "shots": self.spec.method.shots, "steps": self.spec.method.eval_steps,
                            "meta": None, "baseline": self.validate(loop, baseline)[metric]}}

    def epoch_summary(self, extra, metrics):
        metric = extra["fewshot"]["metric"]
        return {**extra, "fewshot": {**extra["fewshot"], "meta": metrics[metric]}}


HOOKS = Meta  # what `MethodConfig.hooks` finds beside the config
