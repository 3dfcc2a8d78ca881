"""The GPU benchmark scripts stay runnable: their arithmetic is checked against real models, and a
tiny CPU smoke run goes through both paths (ftray and plain torchrun); the batch-inference benchmark's
smoke runs `ftray predict` against its plain loop."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import llm_bench  # noqa: E402


@pytest.mark.parametrize("size", ["tiny", "1b", "8b"])
def test_flop_count_matches_the_model(size):
    """6N of the MFU formula counts exactly the parameters that do matrix products: every weight
    but the input embedding and the norms; with a frozen base (LoRA, QLoRA) 4N + 6 x trainable."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = llm_bench.SIZES[size]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    attention = 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] * llm_bench.SEQ[size]
    assert llm_bench.flops_per_token(cfg, llm_bench.SEQ[size]) == 6 * matmul + attention
    assert llm_bench.flops_per_token(cfg, llm_bench.SEQ[size], trainable=1000) == 4 * matmul + 6000 + attention
    if size == "1b":
        assert 1.0e9 < sum(p.numel() for p in model.parameters()) < 1.2e9
    if size == "8b":  # Llama-3-8B: 8.03B parameters
        assert 8.0e9 < sum(p.numel() for p in model.parameters()) < 8.1e9


@pytest.mark.slow  # the GPU benchmark's CPU smoke (two ftray + torchrun runs, ~2 min idle); the step probe's smoke and the FLOP count stay in the default run
def test_smoke_runs_both_paths(tmp_path):
    results = tmp_path / "results.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "llm_bench.py"), "smoke",
                           "--work", str(tmp_path / "work"), "--results", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["path"], r.get("method"), r.get("strategy")) for r in rows] == [
        ("ftray", "lora", "ddp"), ("plain", "full", "ddp"), ("plain", "full", "fsdp"), ("floor", None, None)]
    for r in rows[:3]:
        assert r["tokens_per_s"] > 0 and r["gpus"] == 2
    # The ftray row trained what the benchmark asked for: LoRA r=16 on every linear layer of the
    # tiny Llama but the output head (peft's all-linear), r * (in + out) per projection, on top of
    # the untouched base model; and it reported each of the spec's 2 epochs.
    cfg, r = llm_bench.SIZES["tiny"], 16
    d, ff = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * d // cfg["num_attention_heads"]
    per_layer = r * ((d + d) + 2 * (d + kv) + (d + d) + 2 * (d + ff) + (ff + d))
    lora = cfg["num_hidden_layers"] * per_layer
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):
        base = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg)).parameters())
    assert rows[0]["params"] == {**rows[0]["params"], "trainable": lora, "total": base + lora}
    assert len(rows[0]["epochs"]) == 2 and rows[0]["first_step_s"] > 0
    floor = rows[3]  # Ray Train's own start-up, stage by stage: each after the one before
    stages = ["torch_imported_s", "ray_started_s", "worker_started_s", "model_built_s", "first_step_s"]
    assert 0 < floor[stages[0]] and all(floor[a] <= floor[b] for a, b in zip(stages, stages[1:])), floor


def test_step_probe_smoke_trains_full_and_lora(tmp_path):
    results = tmp_path / "probe.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "step_probe.py"), "smoke",
                           "--results", str(results)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["smoke-full", "smoke-lora"], rows
    for r in rows:
        assert "error" not in r and r["tokens_per_s"] > 0
        # A freshly initialised model on uniformly drawn tokens is near chance: its first loss is
        # ln(vocabulary) for a mean token cross-entropy over the whole vocabulary (the step the MFU
        # figures time); a summed loss, or logits over part of the vocabulary, is far from it.
        assert abs(r["loss_first"] - math.log(llm_bench.SIZES["tiny"]["vocab_size"])) < 0.05, r
        assert math.isfinite(r["loss_last"])


# ~80-240 s; streaming stays in the default run (tests/test_data.py::test_large_inputs_stream_and_are_read_
# again_each_epoch, tests/test_hf_datasets.py::test_saved_datasets_train_end_to_end_streamed)
@pytest.mark.slow
def test_data_scale_smoke_streams_a_jsonl_through_ftray_run(tmp_path):
    """benchmarks/data_scale.py's smoke mode: 2 MiB of JSONL over a lowered streaming limit, one
    epoch of `ftray run`; its row reports every generated row trained on and the data files gone."""
    results = tmp_path / "scale.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "data_scale.py"), "smoke",
                           "--work", str(tmp_path / "work"), "--results", str(results)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = [json.loads(line) for line in results.read_text().splitlines()]
    assert row["streamed"] and row["train_rows"] == row["rows"]
    assert row["steps"] == math.ceil(row["rows"] / row["batch"])
    assert 0 < row["peak_driver_rss_mib"] <= row["peak_tree_rss_mib"] and row["tokens_per_s"] > 0
    assert not list((tmp_path / "work").glob("*.jsonl"))


# ~60-240 s; `ftray predict` stays in the default run (tests/test_predict.py)
@pytest.mark.slow
def test_predict_bench_smoke_agrees_row_for_row(tmp_path):
    """`benchmarks/predict_bench.py smoke`: `ftray predict` and the plain PyTorch loop run end to
    end on the same exported model and file, and write the same predictions for every row, in order."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "predict_bench.py"), "smoke",
                           "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    row = json.loads(proc.stdout.splitlines()[-1])
    assert row["predictions_agree"] and row["rows"] == 3000
    assert row["ratio"] == pytest.approx(row["plain_s"][0] / row["ftray_s"][0])


# ~60-240 s (a fresh local Ray and Serve); `ftray serve` itself stays in the default run (tests/test_serve.py)
@pytest.mark.slow
def test_serve_bench_smoke_both_servers_agree(tmp_path):
    """`benchmarks/serve_bench.py smoke`: `ftray serve` and the bare FastAPI + PyTorch server answer
    the same requests with the same predictions and no errors; the ratio is of the two medians."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_bench.py"), "smoke",
                           "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    row = json.loads(proc.stdout.splitlines()[-1])
    assert row["predictions_agree"] and row["errors"] == {"bare": 0, "ftray": 0}
    assert len(row["runs"]["bare"]) == len(row["runs"]["ftray"]) == 1 and row["requests"] == 16
    assert row["ratio"] == pytest.approx(row["ftray"]["requests_per_s"] / row["bare"]["requests_per_s"])
