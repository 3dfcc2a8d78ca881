"""Batch inference rows/s: `ftray predict` (Ray Data, an actor pool) against a plain PyTorch loop
on the same exported model and the same Parquet file, both end to end in a fresh process (imports,
Ray start-up, reading, the model, writing the same output columns to one Parquet file).

    python benchmarks/predict_bench.py full  [--rows 300000] [--units 2048] [--layers 3] [--repeats 3]
                                             [--actors 2] [--cpus-per-actor 1]
    python benchmarks/predict_bench.py smoke                       # seconds: both paths agree

`full` trains the quickstart MLP (wider: `--units`, `--layers`, so that the model, not the file,
is the work), writes the digits repeated to `--rows` rows, then alternates plain / ftray / ftray's
start-up alone (the same command on a 1-row file) `--repeats` times and prints the medians, their
ratio and each pair's start-up share (a line per pair on stderr as it ends). One JSON line per
measurement goes to `--results`.

Fair by construction: the same exported model, the same file, the same batch size (`--batch-size`
for both), the same output columns into one Parquet file, and the same torch threads in all: the
plain loop gets `--actors` x `--cpus-per-actor` threads in one process, ftray `--actors` actors of
`--cpus-per-actor` CPUs and as many torch threads each (`ftray predict --concurrency A
--cpus-per-actor C`). Both run in fresh processes with OMP_NUM_THREADS=1 in the environment, so
neither gets threads it was not given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]

PLAIN = r'''
import sys, time, numpy as np, pyarrow as pa, pyarrow.parquet as pq, torch
from ftray.data import feature_matrix
from ftray.models import load_exported
model_dir, data, out, batch, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
model = load_exported(model_dir).eval()
classes = np.asarray(model.info.classes)
writer, done = None, 0
for rb in pq.ParquetFile(data).iter_batches(batch_size=batch):
    t = pa.Table.from_batches([rb])
    with torch.no_grad():
        out_ = model({"x": torch.as_tensor(feature_matrix(t, ["pixels"], "batch"))})
    probs = out_.float().softmax(-1).numpy()
    t = t.add_column(0, "id", pa.array(np.arange(done, done + t.num_rows)))
    t = t.append_column("prediction", pa.array(classes[out_.argmax(-1).numpy()]))
    t = t.append_column("probabilities", pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), probs.shape[1]))
    writer = writer or pq.ParquetWriter(out, t.schema)
    writer.write_table(t)
    done += t.num_rows
writer.close()
'''


def env() -> dict:
    # A busy shared machine can take over Ray's default 30 s to register a fresh raylet.
    return {"RAY_raylet_start_wait_time_s": "120", **os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}


def sh(argv: list[str], timeout: float = 3600) -> float:
    """Run `argv` (must succeed); its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise SystemExit(f"{argv[:4]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def train(work: Path, units: int, layers: int) -> Path:
    run = work / "runs" / "bench"
    if not (run / "model").is_dir():
        sh([sys.executable, "-m", "ftray", "run", "jobs/quickstart.yaml", "--set", f"run.storage_path={work / 'runs'}",
            "--set", "run.name=bench", "--set", "train.epochs=1", "--set", "scaling.num_workers=1",
            "--set", f"model.units={units}", "--set", f"model.layers={layers}"])
    return run


def big_file(path: Path, rows: int) -> Path:
    """The digits' pixels and labels repeated to `rows` rows."""
    digits = pq.read_table(REPO / "jobs" / "data" / "digits.parquet", columns=["pixels", "label"])
    idx = np.arange(rows) % digits.num_rows
    pq.write_table(digits.take(pa.array(idx)), path, row_group_size=16384)
    return path


def ftray_predict(run: Path, data: Path, out: Path, batch: int, actors: int, cpus: int) -> float:
    return sh([sys.executable, "-m", "ftray", "predict", str(run), "--data", str(data), "--out", str(out),
               "--concurrency", str(actors), "--cpus-per-actor", str(cpus), "--batch-size", str(batch)])


def plain(run: Path, data: Path, out: Path, batch: int, threads: int) -> float:
    return sh([sys.executable, "-c", PLAIN, str(run / "model"), str(data), str(out), str(batch), str(threads)])


def measure(work: Path, rows: int, units: int, layers: int, repeats: int, batch: int, results: Path,
            startup: bool = True, actors: int = 2, cpus: int = 1) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    run = train(work, units, layers)
    data = big_file(work / f"digits_{rows}.parquet", rows)
    # ftray's start-up alone (process, Ray, actors): the whole command on a 1-row file, in every
    # pair, so that each pair's start-up share is measured at that pair's load
    one = big_file(work / "one.parquet", 1)
    times, loads = {"plain": [], "ftray": [], "startup": []}, [os.getloadavg()[0]]
    for i in range(repeats):  # alternated, so that a change in the machine's load hits both
        times["plain"].append(plain(run, data, work / "plain.parquet", batch, actors * cpus))
        times["ftray"].append(ftray_predict(run, data, work / "ftray.parquet", batch, actors, cpus))
        if startup:
            times["startup"].append(ftray_predict(run, one, work / "one_out.parquet", batch, actors, cpus))
        loads.append(os.getloadavg()[0])
        print(json.dumps({"pair": i + 1, **{k: v[-1] for k, v in times.items() if v}, "load": loads[-1]}),
              file=sys.stderr, flush=True)
    a, b = pq.read_table(work / "plain.parquet"), pq.read_table(work / "ftray.parquet")
    agree = (a.num_rows == b.num_rows == rows and a.column("id").to_pylist() == list(range(rows))
             and a.column("prediction").equals(b.column("prediction")) and a.column("id").equals(b.column("id")))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    startup_s = med.get("startup")
    row = {"rows": rows, "units": units, "layers": layers, "batch_size": batch, "actors": actors,
           "cpus_per_actor": cpus, "plain_threads": actors * cpus, "plain_s": times["plain"], "ftray_s": times["ftray"],
           "pair_ratios": [p / f for p, f in zip(times["plain"], times["ftray"])],
           "plain_rows_per_s": rows / med["plain"], "ftray_rows_per_s": rows / med["ftray"],
           "ratio": med["plain"] / med["ftray"], "ftray_startup_s": times["startup"] or None,
           "startup_shares": [s / f for s, f in zip(times["startup"], times["ftray"])] or None,
           "startup_share": startup_s / med["ftray"] if startup else None, "predictions_agree": agree,
           "load_avg": loads, "cpus": os.cpu_count()}
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["full", "smoke"])
    p.add_argument("--work", default="/tmp/ftray-predict-bench")
    p.add_argument("--results", default=None, help="JSON lines (default: WORK/results.jsonl)")
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--units", type=int, default=2048)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--actors", type=int, default=2, help="ftray's actors (--concurrency)")
    p.add_argument("--cpus-per-actor", type=int, default=1, help="ftray's CPUs and torch threads per actor")
    args = p.parse_args(argv)
    work = Path(args.work)
    if args.mode == "smoke":
        args.rows, args.units, args.layers, args.repeats = 3000, 16, 1, 1
    row = measure(work, args.rows, args.units, args.layers, args.repeats, args.batch_size,
                  Path(args.results or work / "results.jsonl"), startup=args.mode == "full",
                  actors=args.actors, cpus=args.cpus_per_actor)
    print(json.dumps(row))
    return 0 if row["predictions_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
