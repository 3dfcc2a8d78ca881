"""FSDP2 (`scaling.strategy: fsdp`) on CPU workers (gloo): the same updates as one worker, and a
sharded run that dies resumes from its (full-state) checkpoint to the same end."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from ftray.models import load_exported
from ftray.spec import SpecError, load_spec
from tests.conftest import blobs, mlp_spec, write_jsonl, write_spec
from tests.test_train import run_ok, summary

LLAMA = {"model_type": "llama", "vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 32, "pad_token_id": 0}


@pytest.mark.parametrize("accum", [2])  # covers both the no-sync and the sync micro-batch
def test_sharded_update_equals_one_worker(ray_session, tmp_path, capsys, accum):
    """Full-batch SGD: 2 FSDP2 workers (with and without accumulation) give one worker's weights."""
    pq.write_table(blobs(64, seed=1), tmp_path / "train.parquet")
    pq.write_table(blobs(16, seed=2), tmp_path / "val.parquet")

    def spec(name, workers, strategy):
        return write_spec(tmp_path / f"{name}.yaml", mlp_spec(
            tmp_path / "train.parquet", tmp_path / "runs", name,
            model={"layers": 2}, scaling={"num_workers": workers, "strategy": strategy},
            data={"val_path": str(tmp_path / "val.parquet"), "shuffle_buffer": 0},
            train={"epochs": 3, "batch_size": 64, "lr": 0.5, "optimizer": {"name": "sgd", "momentum": 0.9},
                   "grad_accum_steps": accum, "grad_clip": 10.0}))

    run_ok(capsys, spec("one", 1, "ddp"))
    run_ok(capsys, spec("sharded", 2, "fsdp"))
    one, sharded = (load_exported(str(tmp_path / "runs" / n)).state_dict() for n in ("one", "sharded"))
    assert summary(tmp_path / "runs" / "sharded")["steps_done"] == 3
    assert one.keys() == sharded.keys()
    for key in one:
        torch.testing.assert_close(sharded[key], one[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # ~2.5 min; FSDP2's equal updates stay in the default run (test_sharded_update_equals_one_worker), exact resumption after kills too (tests/test_faults.py)
def test_sharded_causal_lm_resumes_after_a_failure(ray_session, tmp_path, capsys, monkeypatch, tiny_gpt):
    """A 2-worker FSDP2 run of a Llama-style decoder fails after epoch 1, Ray Train restarts it from the
    full-state checkpoint (weights and AdamW moments re-sharded), and it ends where an uninterrupted
    run ends."""
    rows = [{"text": f"the {w} sat on the {v} and the {v} sat on the {w}"}
            for w in ("cat", "dog", "bird", "fox") for v in ("mat", "log", "rug", "box")] * 3
    write_jsonl(tmp_path / "lm.jsonl", rows)

    def spec(name):
        return write_spec(tmp_path / f"{name}.yaml", {
            "model": {"name": "hf", "path": str(tiny_gpt), "max_length": 24, "config": LLAMA},
            "data": {"path": str(tmp_path / "lm.jsonl"), "task": "causal_lm", "text": "text", "label": None,
                     "val_fraction": 0.25, "shuffle_buffer": 0},
            "train": {"epochs": 3, "batch_size": 12, "lr": 0.003, "optimizer": {"name": "adamw"}},
            "scaling": {"num_workers": 2, "strategy": "fsdp"},
            "run": {"name": name, "storage_path": str(tmp_path / "runs"), "max_failures": 1}})

    run_ok(capsys, spec("straight"))
    monkeypatch.setenv("FTRAY_FAIL_AFTER_EPOCH", "1")
    run_ok(capsys, spec("failed_once"))
    straight, failed = summary(tmp_path / "runs" / "straight"), summary(tmp_path / "runs" / "failed_once")
    assert [r["epoch"] for r in failed["resumes"]] == [1]
    assert failed["steps_done"] == straight["steps_done"]
    assert failed["history"][0]["val_perplexity"] > failed["history"][-1]["val_perplexity"]  # it learned
    assert failed["history"][-1]["tokens_per_s"] > 0
    for a, b in zip(straight["history"], failed["history"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    # The export is a plain Hugging Face model with the trained (gathered, unsharded) weights.
    config = json.loads((tmp_path / "runs" / "failed_once" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    a, b = (load_exported(str(tmp_path / "runs" / n)).state_dict() for n in ("straight", "failed_once"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)


def test_sharding_refuses_what_it_cannot_do(tmp_path):
    pq.write_table(blobs(16), tmp_path / "d.parquet")
    path = write_spec(tmp_path / "s.yaml", mlp_spec(tmp_path / "d.parquet", tmp_path / "runs",
                                                   scaling={"strategy": "fsdp"}, train={"l1": 0.001}))
    with pytest.raises(SpecError, match="scaling.strategy"):
        load_spec(path)
