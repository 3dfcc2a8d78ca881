"""`ftray run` end to end on the shared local Ray: the run folder, exact resumption, data-parallel
equivalence, Hugging Face models, and bad input stopped before Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ftray import cli, data, ray_context, train
from ftray.faults import FAIL_AFTER_EPOCH_ENV
from ftray.models import load_exported
from ftray.spec import JobSpec, load_spec
from tests.conftest import REPO, blobs, mlp_spec, texts, write_jsonl, write_spec


def run_cli(capsys, spec_path, *args) -> tuple[int, str, str]:
    code = cli.main(["run", str(spec_path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_ok(capsys, spec_path, *args) -> str:
    """Run a spec that must succeed; on failure show why (the summary's error and stderr's tail)."""
    code, out, err = run_cli(capsys, spec_path, *args)
    assert code == 0, f"exit {code}: {err[-3000:]}"
    return out


def summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def tensorboard_steps(folder: Path, tag: str) -> list[int]:
    """The steps of `tag`'s scalars in a folder's TensorBoard event files (TFRecord framing: length,
    its CRC, the Event proto, its CRC)."""
    import struct
    from tensorboardX.proto.event_pb2 import Event
    steps = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw, pos = path.read_bytes(), 0
        while pos < len(raw):
            (n,) = struct.unpack("<Q", raw[pos:pos + 8])
            event = Event.FromString(raw[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return sorted(steps)


def test_run_writes_a_complete_run_folder(ray_session, tmp_path, blobs_parquet, capsys):
    spec = write_spec(tmp_path / "job.yaml", mlp_spec(
        blobs_parquet, tmp_path / "runs", "folder", scaling={"num_workers": 2},
        model={"dropout": 0.1}, train={"epochs": 3, "schedule": {"name": "cosine", "warmup_steps": 2}}))
    code, out, _ = run_cli(capsys, spec)
    run_dir = tmp_path / "runs" / "folder"
    assert code == 0 and out.strip().splitlines()[-1] == str(run_dir)
    s = summary(run_dir)
    assert s["status"] == "succeeded" and s["epochs_done"] == 3
    assert [m["epoch"] for m in s["history"]] == [1, 2, 3]
    assert set(s["metrics"]) == {"val_loss", "val_accuracy"} and s["metrics"]["val_accuracy"] > 0.8
    assert s["params"]["total"] == s["params"]["trainable"] == 8 * 16 + 16 + 16 * 3 + 3
    assert s["spec"]["scaling"]["num_workers"] == 2 and s["timings"]["fit_s"] > 0
    assert Path(s["checkpoint"]).is_dir() and (Path(s["checkpoint"]) / "trainer_state.pt").is_file()
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # Every epoch reached TensorBoard, the last one too (its events were lost in the writer's queue).
    assert tensorboard_steps(run_dir / "tensorboard", "val_loss") == [1, 2, 3]

    # The exported model reproduces the reported validation accuracy on the same held-out rows.
    model = load_exported(str(run_dir)).eval()
    _, val = data.split_table(pq.read_table(blobs_parquet), 0.2, seed=0)
    x = torch.tensor(data.feature_matrix(val, ["x"], "val"))
    acc = (model({"x": x}).argmax(-1).numpy() == val["label"].to_numpy()).mean()
    assert acc == pytest.approx(s["metrics"]["val_accuracy"])

    # Killed after its last checkpoint, before its summary: the re-run trains nothing and writes
    # the same summary from that checkpoint (what a restored Tune trial relies on).
    (run_dir / "summary.json").unlink()
    code, out, _ = run_cli(capsys, spec)
    again = summary(run_dir)
    assert code == 0 and again["status"] == "succeeded" and again["history"] == s["history"]
    assert again["metrics"] == s["metrics"] and again["steps_done"] == s["steps_done"]


def test_resume_after_a_failure_matches_an_uninterrupted_run(ray_session, tmp_path, blobs_parquet,
                                                             capsys, monkeypatch):
    def spec(name):
        return write_spec(tmp_path / f"{name}.yaml", mlp_spec(
            blobs_parquet, tmp_path / "runs", name, model={"dropout": 0.2},
            data={"shuffle_buffer": 64}, train={"epochs": 4, "schedule": {"name": "cosine"}}))

    monkeypatch.setenv(FAIL_AFTER_EPOCH_ENV, "2")
    code, out, err = run_cli(capsys, spec("resumed"))
    assert code == 1 and "re-run to resume" in err
    failed = summary(tmp_path / "runs" / "resumed")
    assert failed["status"] == "failed" and "injected failure" in failed["error"]
    assert failed["epochs_done"] == 2 and Path(failed["checkpoint"]).is_dir()

    monkeypatch.delenv(FAIL_AFTER_EPOCH_ENV)
    run_ok(capsys, spec("resumed"))
    resumed = summary(tmp_path / "runs" / "resumed")
    assert resumed["resumes"] == [{"epoch": 2, "step": failed["steps_done"]}]
    assert [m["epoch"] for m in resumed["history"]] == [1, 2, 3, 4]

    run_ok(capsys, spec("straight"))
    straight = summary(tmp_path / "runs" / "straight")
    assert straight["resumes"] == [] and straight["steps_done"] == resumed["steps_done"]
    assert [m["step"] for m in straight["history"]] == [m["step"] for m in resumed["history"]]
    for key in ("val_loss", "val_accuracy"):
        assert resumed["metrics"][key] == pytest.approx(straight["metrics"][key], rel=1e-6, abs=1e-7)
    for a, b in zip(resumed["history"], straight["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)


# With accumulation: ~60 s; accumulation across workers stays in the default run (tests/test_parallel.py).
@pytest.mark.parametrize("workers, accum", [(2, 1), pytest.param(2, 2, marks=pytest.mark.slow)])
def test_data_parallel_update_equals_one_worker(ray_session, tmp_path, capsys, workers, accum):
    """Full-batch SGD on 64 rows: the update only depends on the global batch, not on how it is split."""
    pq.write_table(blobs(64, seed=1), tmp_path / "train.parquet")
    pq.write_table(blobs(16, seed=2), tmp_path / "val.parquet")

    def spec(name, num_workers, grad_accum):
        return write_spec(tmp_path / f"{name}.yaml", mlp_spec(
            tmp_path / "train.parquet", tmp_path / "runs", name, scaling={"num_workers": num_workers},
            data={"val_path": str(tmp_path / "val.parquet"), "shuffle_buffer": 0},
            train={"epochs": 3, "batch_size": 64, "lr": 0.5, "optimizer": {"name": "sgd", "momentum": 0.9},
                   "grad_accum_steps": grad_accum}))

    run_ok(capsys, spec("one", 1, 1))
    run_ok(capsys, spec("many", workers, accum))
    one, many = (load_exported(str(tmp_path / "runs" / n)).state_dict() for n in ("one", "many"))
    assert summary(tmp_path / "runs" / "many")["steps_done"] == 3
    for key in one:
        torch.testing.assert_close(many[key], one[key], rtol=1e-5, atol=1e-6)
    # Sanity: the updates were not all zero (the workers' seed rebuilds the initial weights).
    from ftray.models import ModelInfo, build_model
    torch.manual_seed(0)
    start = build_model(load_spec(tmp_path / "one.yaml"), ModelInfo("classification", 8, [0, 1, 2])).state_dict()
    assert start is not None and not torch.equal(start["classifier.weight"], one["classifier.weight"])


@pytest.mark.slow  # ~65 s; Hugging Face classifiers and causal LMs stay end to end in the default run (tests/test_jobs.py: text classifier, LLM SFT)
def test_hf_sequence_classifier_and_causal_lm(ray_session, tmp_path, tiny_bert, tiny_gpt, capsys):
    write_jsonl(tmp_path / "cls.jsonl", texts(64))
    cls = write_spec(tmp_path / "cls.yaml", {
        "model": {"name": "hf", "path": str(tiny_bert), "max_length": 16},
        "data": {"path": str(tmp_path / "cls.jsonl"), "text": "text", "label": "label", "val_fraction": 0.25},
        "method": {"name": "transfer", "unfreeze_last": 1},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "precision": "bf16"},
        "scaling": {"num_workers": 2},
        "run": {"name": "cls", "storage_path": str(tmp_path / "runs")}})
    run_ok(capsys, cls)
    s = summary(tmp_path / "runs" / "cls")
    # transfer with unfreeze_last: 1 trains exactly the last encoder block and the new head;
    # embeddings, the other block and the pooler stay frozen. Counted here on the model itself.
    from transformers import AutoModelForSequenceClassification
    ref = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    last_block = sum(p.numel() for p in ref.bert.encoder.layer[-1].parameters())
    head = sum(p.numel() for p in ref.classifier.parameters())
    assert (last_block, head) == (8544, 66)  # hidden 32, intermediate 64; 32 x 2 + 2
    assert s["params"] == {**s["params"], "trainable": last_block + head,
                           "total": sum(p.numel() for p in ref.parameters())}
    assert (tmp_path / "runs" / "cls" / "model" / "config.json").is_file()

    write_jsonl(tmp_path / "lm.jsonl", [{"text": r["text"]} for r in texts(48)])
    lm = write_spec(tmp_path / "lm.yaml", {
        "model": {"name": "hf", "path": str(tiny_gpt), "max_length": 16},
        "data": {"path": str(tmp_path / "lm.jsonl"), "text": "text", "task": "causal_lm", "label": None},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.005},
        "run": {"name": "lm", "storage_path": str(tmp_path / "runs")}})
    run_ok(capsys, lm)
    s = summary(tmp_path / "runs" / "lm")
    ppl = [m["val_perplexity"] for m in s["history"]]
    assert ppl[-1] < ppl[0] and np.isfinite(ppl).all()
    assert s["metrics"]["val_perplexity"] == pytest.approx(np.exp(s["metrics"]["val_loss"]))


# ---------------------------------------------------------------------------- bad input: exit 2
def _bad_cases(tmp_path, blobs_parquet):
    good = mlp_spec(blobs_parquet, tmp_path / "runs")
    pq.write_table(blobs(0), tmp_path / "empty.parquet")
    pq.write_table(blobs(30, classes=3, label_offset=2), tmp_path / "offset.parquet")
    write_jsonl(tmp_path / "texts.jsonl", texts(10))
    return {
        "missing data file": ({**good, "data": {**good["data"], "path": str(tmp_path / "nope.parquet")}},
                              "data.path: "),
        "column absent": ({**good, "data": {**good["data"], "features": ["pixels"]}}, "no column 'pixels'"),
        "labels out of range": ({**good, "data": {**good["data"], "path": str(tmp_path / "offset.parquet"),
                                                   "classes": [0, 1, 2]}}, "row 1: label 3 is not one of"),
        "empty dataset": ({**good, "data": {**good["data"], "path": str(tmp_path / "empty.parquet")}}, "no rows"),
        "missing model path": ({**good, "model": {"name": "hf", "path": str(tmp_path / "no_model")},
                                "data": {"path": str(tmp_path / "texts.jsonl"), "text": "text"}}, "model.path: "),
        "missing init_from": ({**good, "model": {**good["model"], "init_from": str(tmp_path / "no_run")}},
                              "model.init_from: "),
        "gpu on a cpu machine": ({**good, "scaling": {"use_gpu": True}}, "scaling.use_gpu"),
        "too many local workers": ({**good, "scaling": {"num_workers": 512}, "train": {"batch_size": 512}},
                                   "scaling.num_workers: 512 workers on an embedded local Ray"),
    }


def test_bad_input_exits_2_before_ray_starts(tmp_path, blobs_parquet, capsys, monkeypatch):
    def no_ray(*a, **k):
        raise AssertionError("Ray must not start on bad input")
    monkeypatch.setattr(ray_context, "use_ray", no_ray)
    for case, (raw, expected) in _bad_cases(tmp_path, blobs_parquet).items():
        path = write_spec(tmp_path / "bad.yaml", raw)
        code, out, err = run_cli(capsys, path)
        assert code == 2, case
        assert expected in err and err.startswith("ftray: error: "), (case, err)
        assert "Traceback" not in err and out == "", case
        assert cli.main(["validate", str(path)]) == 2, case
        capsys.readouterr()


def test_bad_input_in_a_fresh_process(tmp_path, blobs_parquet):
    """The real command: one line on stderr, exit 2, no traceback, no Ray session started."""
    path = write_spec(tmp_path / "bad.yaml", {**mlp_spec(blobs_parquet, tmp_path / "runs"), "train": {"lr": -1}})
    for command in (["run", str(path)], ["validate", str(path)], ["run", str(path), "--set", "train.lr=0.1",
                                                                  "--set", "data.label=nope"]):
        p = subprocess.run([sys.executable, "-m", "ftray", *command], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
        assert "Started a local Ray instance" not in p.stderr + p.stdout
    assert "no column 'nope'" in p.stderr


def test_validate_accepts_many_specs_and_overrides(tmp_path, blobs_parquet, capsys):
    a = write_spec(tmp_path / "a.yaml", mlp_spec(blobs_parquet, tmp_path / "runs", "a"))
    b = write_spec(tmp_path / "b.yaml", mlp_spec(blobs_parquet, tmp_path / "runs", "b"))
    assert cli.main(["validate", str(a), str(b), "--set", "train.optimizer.name=rmsprop"]) == 0
    out = capsys.readouterr().out
    assert f"{a}: ok" in out and f"{b}: ok" in out
    assert load_spec(a, ["train.optimizer.name=rmsprop"]).train.optimizer.name == "rmsprop"


@pytest.mark.slow  # ~100 s; distillation stays end to end in the default run (tests/test_jobs.py: text classifier then distill)
def test_precomputed_teacher_logits_train_the_same_student(ray_session, tmp_path, capsys):
    """Distillation with the teacher's logits computed once by Ray Data equals running it in the worker."""
    from ftray.models import ModelInfo, build_model
    from ftray.spec import JobSpec
    pq.write_table(blobs(48, seed=1), tmp_path / "train.parquet")
    pq.write_table(blobs(12, seed=2), tmp_path / "val.parquet")
    teacher_spec = JobSpec.model_validate(mlp_spec(tmp_path / "train.parquet", tmp_path, model={"units": 32}))
    build_model(teacher_spec, ModelInfo("classification", 8, [0, 1, 2])).export(tmp_path / "teacher" / "model")

    def spec(name, precompute):
        return write_spec(tmp_path / f"{name}.yaml", mlp_spec(
            tmp_path / "train.parquet", tmp_path / "runs", name,
            data={"val_path": str(tmp_path / "val.parquet"), "shuffle_buffer": 0},
            method={"name": "distill", "teacher": str(tmp_path / "teacher"), "alpha": 0.3,
                    "temperature": 3.0, "precompute": precompute},
            train={"epochs": 2, "batch_size": 48, "optimizer": {"name": "sgd"}, "lr": 0.5}))

    run_ok(capsys, spec("in_worker", False))
    run_ok(capsys, spec("precomputed", True))
    a, b = (load_exported(str(tmp_path / "runs" / n)).state_dict() for n in ("in_worker", "precomputed"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    s = summary(tmp_path / "runs" / "precomputed")
    assert s["teacher"]["params"]["total"] == 8 * 32 + 32 + 32 * 3 + 3


# tests/test_console.py checks the same of the quickstart's own process in the default run.
@pytest.mark.slow
def test_last_stdout_line_names_the_run_folder(tmp_path, blobs_parquet):
    """The real command in its own process (its own embedded Ray): Ray's forwarded worker output
    ends before ftray prints the run folder as the last line of stdout."""
    path = write_spec(tmp_path / "job.yaml", mlp_spec(blobs_parquet, tmp_path / "runs", "cli", train={"epochs": 1}))
    p = subprocess.run([sys.executable, "-m", "ftray", "run", str(path)], capture_output=True, text=True,
                       cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == str(tmp_path / "runs" / "cli")
    assert "[ftray] epoch 1/1" in p.stdout


def test_elastic_runs_give_up_on_an_unplaceable_worker_group_sooner(tmp_path, monkeypatch):
    """After a node is lost, the elastic controller may ask for a group the cluster can no longer
    place: only Ray's worker-group start timeout sends it back to size a smaller one."""
    def spec(**scaling):
        return JobSpec.model_validate(mlp_spec(tmp_path / "d.parquet", tmp_path, scaling=scaling,
                                               run={"max_failures": 1}))
    monkeypatch.delenv(ray_context.WORKER_START_TIMEOUT_ENV, raising=False)
    assert ray_context.worker_start_timeout(spec(num_workers=[1, 2])) == "60"
    assert ray_context.worker_start_timeout(spec(num_workers=2)) == "600"
    monkeypatch.setenv(ray_context.WORKER_START_TIMEOUT_ENV, "90")  # the user's setting wins
    assert ray_context.worker_start_timeout(spec(num_workers=[1, 2])) == "90"


def test_compiled_run_drops_the_incomplete_batch_and_exports_plain_weights(ray_session, tmp_path,
                                                                           blobs_parquet, capsys):
    """`train.compile`: each epoch's last, incomplete batch is left out (a new shape would compile
    again), and the export is the plain model (compiling keeps parameter names)."""
    train_rows = 192  # blobs_parquet: 240 rows, 20% held out
    spec = write_spec(tmp_path / "job.yaml", mlp_spec(
        blobs_parquet, tmp_path / "runs", "compiled", train={"epochs": 2, "batch_size": 28, "compile": True}))
    run_ok(capsys, spec)
    s = summary(tmp_path / "runs" / "compiled")
    assert [m["step"] for m in s["history"]] == [train_rows // 28, 2 * (train_rows // 28)]  # 6 full batches, not 7
    model = load_exported(str(tmp_path / "runs" / "compiled")).eval()
    _, val = data.split_table(pq.read_table(blobs_parquet), 0.2, seed=0)
    acc = (model({"x": torch.tensor(data.feature_matrix(val, ["x"], "val"))}).argmax(-1).numpy()
           == val["label"].to_numpy()).mean()
    assert acc == pytest.approx(s["metrics"]["val_accuracy"]) and acc > 0.8


# ------------------------------------------------------------------ early stopping, kept checkpoints
def checkpoint_epochs(run_dir: Path) -> dict[int, Path]:
    """{epoch: folder} of the checkpoint folders in a run folder."""
    return {json.loads((f / "progress.json").read_text())["epoch"]: f for f in run_dir.glob("checkpoint_*")
            if f.is_dir()}  # Ray Train's checkpoint_manager_snapshot.json lies beside them


def test_early_stopping_stops_a_plateaued_run_and_names_its_best_epoch(ray_session, tmp_path,
                                                                       blobs_parquet, capsys):
    """A run built to plateau: the `step` schedule cuts the LR by 1e-30 after epoch 2, so from epoch
    3 on the weights (and so val_loss) stay exactly the same. With patience 2, epochs 3 and 4 bring
    no improvement and the run stops there, 6 epochs short; epoch 2 is the best."""
    spec = write_spec(tmp_path / "job.yaml", mlp_spec(
        blobs_parquet, tmp_path / "runs", "stopped", data={"shuffle_buffer": 0},
        train={"epochs": 10, "batch_size": 64, "lr": 0.05, "optimizer": {"name": "sgd"},
               "schedule": {"name": "step", "step_epochs": 2, "gamma": 1e-30},
               "early_stopping": {"metric": "val_loss", "mode": "min", "patience": 2}}))
    run_ok(capsys, spec)
    run_dir = tmp_path / "runs" / "stopped"
    s = summary(run_dir)
    losses = [m["val_loss"] for m in s["history"]]
    assert [m["epoch"] for m in s["history"]] == [1, 2, 3, 4] and s["epochs_done"] == 4
    assert losses[1] < losses[0] and losses[3] == losses[2] == losses[1]  # improved, then flat
    assert [m["early_stopped"] for m in s["history"]] == [False, False, False, True] and s["early_stopped"]
    assert s["best"] == s["history"][1] and s["best"]["epoch"] == 2
    assert s["steps_done"] == 4 * 3  # 192 training rows, 64 per step

    # Re-run, even with more epochs: an early-stopped run is finished, it does not train again.
    before = set(checkpoint_epochs(run_dir).values())
    run_ok(capsys, spec, "--set", "train.epochs=12")
    again = summary(run_dir)
    assert again["history"] == s["history"] and again["steps_done"] == s["steps_done"]
    assert again["resumes"] == [] and set(checkpoint_epochs(run_dir).values()) == before


@pytest.mark.parametrize("mode, min_delta, value, best, expected", [
    ("min", 0.0, 0.9, 1.0, True), ("min", 0.0, 1.0, 1.0, False), ("min", 0.2, 0.9, 1.0, False),
    ("min", 0.2, 0.7, 1.0, True), ("max", 0.0, 1.1, 1.0, True), ("max", 0.0, 0.9, 1.0, False),
    ("max", 0.2, 1.1, 1.0, False), ("max", 0.2, 1.3, 1.0, True), ("max", 0.5, -5.0, None, True),
])
def test_early_stopping_improvement_rule(mode, min_delta, value, best, expected):
    """What counts as an improvement: better by more than `min_delta` in the direction of `mode`
    (the first epoch always counts)."""
    from ftray.numerics import improved
    assert improved(value, best, mode, min_delta) is expected


def test_keep_checkpoints_keeps_the_latest_and_resumes_from_them(ray_session, tmp_path, blobs_parquet, capsys):
    spec = write_spec(tmp_path / "job.yaml", mlp_spec(
        blobs_parquet, tmp_path / "runs", "kept", train={"epochs": 3}, run={"keep_checkpoints": 2}))
    run_ok(capsys, spec)
    run_dir = tmp_path / "runs" / "kept"
    kept = checkpoint_epochs(run_dir)
    assert sorted(kept) == [2, 3]  # epoch 1's checkpoint was deleted once epoch 3's was written
    first = summary(run_dir)
    assert Path(first["checkpoint"]) == kept[3]

    run_ok(capsys, spec, "--set", "train.epochs=4")
    resumed = summary(run_dir)
    assert resumed["resumes"] == [{"epoch": 3, "step": first["steps_done"]}]
    assert [m["epoch"] for m in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["history"][:3] == first["history"]
    kept = checkpoint_epochs(run_dir)
    assert sorted(kept) == [3, 4] and Path(resumed["checkpoint"]) == kept[4]


# ------------------------------------------------------------------------ gradient checkpointing
def fit_in_process(spec_raw: dict) -> dict:
    """`train.fit`, the loop every Ray Train worker runs, here in this process on one worker over
    the run's real Ray Datasets, watching the model it builds: whether transformers reports
    checkpointing on, and how often its first block runs in training mode (a checkpointed block
    runs again in the backward pass, to recompute what it did not keep: its first layer norm is
    called twice per micro-batch; transformers keeps the block's own hooks outside the checkpoint)."""
    spec = JobSpec.model_validate(spec_raw)
    plan = train.prepare(spec)
    datasets, rows = data.ray_datasets(spec, plan)
    seen = {"block_train_calls": 0, "reports": []}

    def wrap(model, spec, device):
        seen["model"] = model

        def count(module, args, output):
            seen["block_train_calls"] += module.training
        model.hf.transformer.h[0].ln_1.register_forward_hook(count)
        return model

    threads = torch.get_num_threads()
    try:
        train.fit(train.LoopConfig(spec, plan.info, rows["train"]),
                  train.Worker(rank=0, world=1, device=torch.device("cpu"), train_data=datasets["train"],
                               val_data=datasets["val"], resume=None,
                               report=lambda metrics, folder: seen["reports"].append(metrics), wrap=wrap))
    finally:
        torch.set_num_threads(threads)  # fit sets the worker's thread count
    return seen


def test_gradient_checkpointing_is_on_in_the_worker_and_changes_no_number(ray_session, tmp_path, tiny_gpt, capsys):
    write_jsonl(tmp_path / "lm.jsonl", [{"text": r["text"]} for r in texts(24)])

    def spec(name, checkpointing):
        return {"model": {"name": "hf", "path": str(tiny_gpt), "max_length": 16,
                          "gradient_checkpointing": checkpointing},  # the config's dropout 0.1 stays on
                "data": {"path": str(tmp_path / "lm.jsonl"), "text": "text", "task": "causal_lm", "label": None,
                         "val_fraction": 0.25, "shuffle_buffer": 0},
                # SGD: an update linear in the gradient (Adam's normalisation magnifies float noise
                # in near-zero gradients, and recomputation may sum in another order).
                "train": {"epochs": 2, "batch_size": 6, "lr": 0.1, "optimizer": {"name": "sgd"}},
                "run": {"name": name, "storage_path": str(tmp_path / "runs")}}

    off, on = fit_in_process(spec("off", False)), fit_in_process(spec("on", True))
    micro_batches = 2 * 18 // 6  # 2 epochs of 18 training rows, 6 per step
    assert not off["model"].hf.is_gradient_checkpointing and off["block_train_calls"] == micro_batches
    assert on["model"].hf.is_gradient_checkpointing and on["block_train_calls"] == 2 * micro_batches
    # Recomputing gives the same losses and weights (dropout included: the RNG state is replayed).
    for a, b in zip(on["reports"], off["reports"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    trained = off["model"].state_dict()
    for key, value in on["model"].state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=1e-5, atol=1e-6)

    # And `ftray run` with it on, in a Ray Train worker, trains to the same weights.
    run_ok(capsys, write_spec(tmp_path / "on.yaml", spec("on_ray", True)))
    exported = load_exported(str(tmp_path / "runs" / "on_ray")).state_dict()
    for key, value in exported.items():
        torch.testing.assert_close(value, trained[key], rtol=1e-5, atol=1e-6)
