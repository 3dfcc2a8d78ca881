"""Data at scale: `ftray run` over a generated multi-GiB JSONL, peak driver memory and tokens/s.

    python benchmarks/data_scale.py run --gib 2 --gib 0.25       # sizes in GiB, one run each
    python benchmarks/data_scale.py smoke                        # 2 MiB, streamed (tests/test_benchmarks.py)

For each size: a JSONL of that size (random words, ~700 bytes a line) and a small validation file
are written under `--work`, then `ftray run` trains one epoch of a tiny causal LM on it (a word-level
tokenizer over the generator's words, a 1-layer Llama from a config: the model costs little, so
the figure is the data path's), with the driver's limits as shipped (inputs over
`ftray.data.MATERIALIZE_BYTES` stream). A thread samples, every 0.2 s, the RSS of the `ftray run`
process (the driver) and the summed RSS of it and all its descendants (raylet, object store, Ray
Data and Train workers; shared pages counted in each, so an upper bound). One JSON line per size
goes to `--results`; the data files are deleted afterwards. Not a test: the `smoke` mode runs in
the test suite so that the script does not rot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORDS = ["the", "model", "learns", "from", "data", "ray", "streams", "blocks", "tokens", "every", "epoch",
         "driver", "memory", "stays", "flat", "while", "workers", "tokenize", "text", "on", "the", "fly"]
SPECIALS = ["[PAD]", "[UNK]", "[EOS]"]
MAX_LENGTH = 128


def write_jsonl(path: Path, nbytes: int, words: int, seed: int = 0) -> int:
    """About `nbytes` of JSON lines `{"text": ...}` of `words` words on average (rows drawn from a
    pool of 1024 lines, so that writing is fast); the row count."""
    rng = np.random.default_rng(seed)
    pool = np.array([(json.dumps({"text": " ".join(rng.choice(WORDS, size=int(n)))}) + "\n").encode()
                     for n in rng.integers(words // 2, words * 3 // 2 + 1, size=1024)], dtype=object)
    per_row = sum(map(len, pool)) / len(pool)
    rows = written = 0
    with open(path, "wb") as f:
        while written < nbytes:
            n = int(min(20000, max(1, (nbytes - written) / per_row)))
            chunk = b"".join(pool[rng.integers(0, len(pool), size=n)])
            f.write(chunk)
            written, rows = written + len(chunk), rows + n
    return rows


def write_tokenizer(folder: Path) -> int:
    """A word-level tokenizer over WORDS (a fast tokenizer, as real ones are); its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(dict.fromkeys(SPECIALS + WORDS))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]",
                            eos_token="[EOS]").save_pretrained(folder)
    return len(vocab)


def spec(work: Path, name: str, vocab: int, batch: int) -> dict:
    return {
        "model": {"name": "hf", "path": str(work / "tokenizer"), "max_length": MAX_LENGTH,
                  "config": {"model_type": "llama", "vocab_size": vocab, "hidden_size": 16,
                             "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "max_position_embeddings": MAX_LENGTH, "pad_token_id": 0}},
        "data": {"path": str(work / "train.jsonl"), "val_path": str(work / "val.jsonl"), "task": "causal_lm",
                 "text": "text", "label": None, "shuffle_buffer": 0},
        "train": {"epochs": 1, "batch_size": batch, "lr": 0.003},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "run": {"name": name, "storage_path": str(work / "runs"), "seed": 0},
    }


class Sampler(threading.Thread):
    """Peak RSS of a process, and of it with all its descendants, sampled every `every` seconds."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.proc, self.every, self.done = psutil.Process(pid), every, threading.Event()
        self.driver = self.tree = 0

    def run(self):
        while not self.done.is_set():
            try:
                driver = self.proc.memory_info().rss
                tree = driver + sum(_rss(c) for c in self.proc.children(recursive=True))
            except psutil.NoSuchProcess:
                return
            self.driver, self.tree = max(self.driver, driver), max(self.tree, tree)
            self.done.wait(self.every)


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.Error:
        return 0


def measure(work: Path, gib: float, a: argparse.Namespace, vocab: int, stream_over: int | None) -> dict:
    """Write `gib` of training data, run `ftray run` on it once, and return the figures."""
    t0 = time.perf_counter()
    rows = write_jsonl(work / "train.jsonl", int(gib * 2**30), a.words)
    write_jsonl(work / "val.jsonl", a.val_mib << 20, a.words, seed=1)
    written_s = time.perf_counter() - t0
    size = (work / "train.jsonl").stat().st_size
    name = f"scale_{gib:g}gib"
    spec_path = work / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec(work, name, vocab, a.batch), sort_keys=False))
    t1 = time.perf_counter()
    # `ftray run`, with the streaming limit lowered first when asked (the smoke run streams a few MiB).
    code = ("import sys; from ftray import data, cli; "
            + (f"data.MATERIALIZE_BYTES = {stream_over}; " if stream_over is not None else "")
            + "sys.exit(cli.main(['run', sys.argv[1]]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(spec_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=a.timeout)
    finally:
        sampler.done.set()
        proc.kill()
        for f in ("train.jsonl", "val.jsonl"):
            (work / f).unlink(missing_ok=True)
    wall = time.perf_counter() - t1
    if proc.returncode != 0:
        raise SystemExit(f"ftray run failed ({proc.returncode}):\n{err[-4000:]}")
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    epoch = summary["history"][-1]
    return {"gib": round(size / 2**30, 3), "streamed": size > (stream_over or materialize_bytes()),
            "rows": rows, "words_per_row": a.words, "max_length": MAX_LENGTH, "batch": a.batch,
            "input_mib_per_s": round(size / 2**20 / epoch["epoch_time_s"], 2),
            "train_rows": summary["data"]["train_rows"], "steps": summary["steps_done"],
            "peak_driver_rss_mib": round(sampler.driver / 2**20), "peak_tree_rss_mib": round(sampler.tree / 2**20),
            "tokens_per_s": round(epoch["tokens_per_s"]), "epoch_s": round(epoch["epoch_time_s"], 1),
            "run_wall_s": round(wall, 1), "checked_s": summary["timings"]["checked_s"],
            "write_s": round(written_s, 1), "val_perplexity": round(summary["metrics"]["val_perplexity"], 3),
            "load_avg_1m": round(psutil.getloadavg()[0], 1), "date": time.strftime("%Y-%m-%d")}


def materialize_bytes() -> int:
    from ftray import data
    return data.MATERIALIZE_BYTES


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["run", "smoke"])
    p.add_argument("--gib", type=float, action="append", help="training data size(s) in GiB (repeat)")
    p.add_argument("--batch", type=int, default=256, help="train.batch_size (sequences per step)")
    p.add_argument("--words", type=int, help="mean words per row (default: run 2400, ~14 KiB a line, so that "
                   "the tiny model's steps stay few and the data path dominates; smoke 100)")
    p.add_argument("--val-mib", type=int, help="validation file size, MiB (default: run 8, smoke 1)")
    p.add_argument("--timeout", type=int, default=3600, help="hang guard per run, seconds")
    p.add_argument("--stream-over", type=int, help="bytes over which data streams (default: ftray's own "
                   "limit; smoke: 1 MiB, so that its few MiB stream)")
    p.add_argument("--work", type=Path, default=HERE / "out" / "data_scale")
    p.add_argument("--results", type=Path, default=HERE / "out" / "data_scale.jsonl")
    a = p.parse_args(argv)
    sizes = [2 / 1024] if a.mode == "smoke" else (a.gib or [2.0, 0.25])
    stream_over = a.stream_over if a.stream_over is not None or a.mode != "smoke" else 1 << 20
    a.words = a.words or (100 if a.mode == "smoke" else 2400)
    a.val_mib = a.val_mib or (1 if a.mode == "smoke" else 8)
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    vocab = write_tokenizer(a.work / "tokenizer")
    a.results.parent.mkdir(parents=True, exist_ok=True)
    for gib in sizes:
        row = {"mode": a.mode, **measure(a.work, gib, a, vocab, stream_over)}
        print(json.dumps(row), flush=True)
        with open(a.results, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
