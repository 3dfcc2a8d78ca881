"""Online serving requests/s and latency: `ftray serve` (Ray Serve, one replica) against a bare
FastAPI + PyTorch process (uvicorn, one process) serving the same exported model with the same JSON
API, both on 127.0.0.1 of this machine, both with one torch thread for the model.

    python benchmarks/serve_bench.py full  [--requests 400] [--rows 32] [--units 2048] [--layers 3] [--repeats 3]
    python benchmarks/serve_bench.py smoke                       # seconds: both servers agree
    python benchmarks/serve_bench.py ceiling [--requests 300]    # no model: bare FastAPI vs Ray Serve
    python benchmarks/serve_bench.py full --kinds bare,ftray,ftray-r2,ftray-tuned   # more servers per round

`full` trains the quickstart MLP (wider: `--units`, `--layers`, so that the model is real work),
starts each server in its own process, warms it up, then alternates bare / ftray `--repeats` times:
`--requests` POSTs of `--rows` digit rows each from `--concurrency` client threads. It prints the
medians of requests/s, p50 and p99 latency and their ratio; one JSON line per measurement goes to
`--results`.

Fair by construction: the same exported model, the same body, the same client, one torch thread
for the model on both sides and one model call at a time (the bare process holds a lock, as the
replica does), one process of model work each (one replica). `--batch-requests N` turns on ftray's
`@serve.batch` (several concurrent requests in one model call), which the bare server does not do:
measure it apart, the default (1) compares like with like. Each pair's ratio is in `pair_ratios`.

`ceiling` serves a no-op handler (parses the body, answers a fixed body of the model's answer's
size) bare and through Ray Serve: the most requests/s Serve's own path allows on this machine.
`--kinds` picks the servers, loaded in turn each round, the first the baseline of the ratios:
`ftray-r2` is `ftray serve --replicas 2`, `*-tuned` adds Serve's request-path flags (SERVE_FLAGS),
`ftray-direct` is `ftray serve --ingress direct` and `serve-noop-direct` the no-op with Serve's
direct ingress (the replica answers on the port itself, no proxy on the path).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from predict_bench import env, train  # noqa: E402  (the same trained model and environment)

from ftray.serve import direct_ingress_env  # noqa: E402  (the flags `ftray serve --ingress direct` sets)

BARE = r'''
import sys, threading, numpy as np, pyarrow as pa, torch, uvicorn
from fastapi import FastAPI, Request
from ftray.data import feature_matrix
from ftray.models import load_exported
torch.set_num_threads(1)
model = load_exported(sys.argv[1]).eval()
classes, lock, app = np.asarray(model.info.classes), threading.Lock(), FastAPI()

@app.get("/healthz")
def healthz():
    return {"status": "ok"}

@app.post("/predict")
async def predict(request: Request):
    rows = (await request.json())["rows"]
    x = torch.as_tensor(feature_matrix(pa.Table.from_pylist(rows), ["pixels"], "rows"))
    with lock, torch.no_grad():
        out = model({"x": x})
    return {"predictions": classes[out.argmax(-1).numpy()].tolist(), "probabilities": out.softmax(-1).tolist()}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
'''


# Ray Serve's own flags on the request path (ray/serve/_private/constants.py: its
# RAY_SERVE_THROUGHPUT_OPTIMIZED set without direct ingress, which gives each replica a port of its
# own instead of the proxy's): the value tried (kinds `*-tuned`) and Serve's default. Measured
# 2026-12-03 (RESULTS.md): +13% on the no-op, none on the model's path, so ftray does not set them.
SERVE_FLAGS = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": ("0", "1"),
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": ("0", "1"),
    "RAY_SERVE_PROXY_USE_GRPC": ("1", "0"),
    "RAY_SERVE_LOG_TO_STDERR": ("0", "1"),
}

# The transport's ceiling: a handler that parses the body as the model's does and answers a fixed
# body of the model's answer's size, with no model; served bare (uvicorn) and through Ray Serve
# (the same FastAPI app as a deployment's ingress, one replica, as `ftray serve` deploys it).
NOOP_APP = r'''
import json, sys
from fastapi import FastAPI, Request
app = FastAPI()
ANSWER = {"predictions": [0] * 32, "probabilities": [[0.1] * 10] * 32}

@app.get("/healthz")
def healthz():
    return {"status": "ok"}

@app.post("/predict")
async def predict(request: Request):
    rows = json.loads(await request.body())["rows"]
    return {k: v[:len(rows)] for k, v in ANSWER.items()}
'''
NOOP_BARE = NOOP_APP + r'''
import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
'''
NOOP_SERVE = NOOP_APP + r'''
import threading, ray
from ray import serve

@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32,
                  logging_config={"enable_access_log": False})
@serve.ingress(app)
class Noop:
    pass

ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[2] if len(sys.argv) > 2 else sys.argv[1])}, logging_config={"enable_access_log": False})
serve.run(Noop.bind(), name="noop", route_prefix="/noop", blocking=False)
threading.Event().wait()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 900) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} not healthy after {timeout} s")


def start_server(kind: str, run: Path, port: int, batch_requests: int | None = None) -> tuple[subprocess.Popen, str]:
    """The server process and its model's base URL."""
    if kind == "bare":
        argv, url = [sys.executable, "-c", BARE, str(run / "model"), str(port)], f"http://127.0.0.1:{port}"
    elif kind == "bare-noop":
        argv, url = [sys.executable, "-c", NOOP_BARE, str(port)], f"http://127.0.0.1:{port}"
    elif kind.startswith("serve-noop-direct"):  # the replica's own port (DIRECT), the proxy on another
        argv, url = [sys.executable, "-c", NOOP_SERVE, str(port), str(free_port())], f"http://127.0.0.1:{port}/noop"
    elif kind.startswith("serve-noop"):  # serve-noop or serve-noop-tuned
        argv, url = [sys.executable, "-c", NOOP_SERVE, str(port)], f"http://127.0.0.1:{port}/noop"
    else:  # ftray, ftray-tuned (SERVE_FLAGS), ftray-r2 (2 replicas), ftray-direct (--ingress direct)
        argv, url = [sys.executable, "-m", "ftray", "serve", str(run), "--port", str(port)], \
            f"http://127.0.0.1:{port}/{run.name}"
        argv += ["--batch-requests", str(batch_requests)] if batch_requests else []
        argv += ["--replicas", "2"] if kind.endswith("-r2") else []
        argv += ["--ingress", "direct"] if kind.endswith("-direct") else []
    flags = {k: v[0] for k, v in SERVE_FLAGS.items()} if kind.endswith("-tuned") else {}
    if kind == "serve-noop-direct":
        flags = {**flags, **direct_ingress_env(port)}
    proc = subprocess.Popen(argv, cwd=REPO, env={**env(), **flags}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    wait_healthy(url, proc)
    return proc, url


def load(url: str, body: bytes, requests: int, concurrency: int, headers: dict) -> dict:
    """`requests` POSTs from `concurrency` threads: requests/s, p50/p99 latency (ms), errors, answers."""
    def one(_):
        t0 = time.perf_counter()
        status, answer = post(f"{url}/predict", body, headers)
        return status, answer, time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        out = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    lat = sorted(t for _, _, t in out)
    return {"requests_per_s": requests / wall, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[max(0, int(0.99 * len(lat)) - 1)], "errors": sum(s != 200 for s, _, _ in out),
            "predictions": out[0][1].get("predictions")}


def measure(work: Path, units: int, layers: int, rows: int, requests: int, concurrency: int, repeats: int,
            results: Path, batch_requests: int | None = None, kinds: tuple[str, ...] = ("bare", "ftray")) -> dict:
    """`kinds` served at once and loaded in turn, `repeats` rounds; each kind's ratio to the first
    (the baseline) per round. `full`: bare vs ftray; `ceiling`: the no-op servers."""
    from ftray.auth import auth_headers
    work.mkdir(parents=True, exist_ok=True)
    run = train(work, units, layers)
    pixels = pq.read_table(REPO / "jobs" / "data" / "digits.parquet", columns=["pixels"]).column("pixels").to_pylist()
    body = json.dumps({"rows": [{"pixels": p} for p in pixels[:rows]]}).encode()
    servers = {k: start_server(k, run, free_port(), batch_requests) for k in kinds}
    # ftray's local Ray uses token authentication (the no-op servers ignore the header)
    headers = {k: auth_headers() if k.startswith("ftray") else {} for k in kinds}
    runs, loads = {k: [] for k in kinds}, [os.getloadavg()[0]]
    try:
        for kind, (_, url) in servers.items():  # warm-up: first calls, thread pools, routing tables
            load(url, body, 2 * concurrency, concurrency, headers[kind])
        for i in range(repeats):  # alternated, so that a change in the machine's load hits all
            for kind, (_, url) in servers.items():
                runs[kind].append(load(url, body, requests, concurrency, headers[kind]))
            loads.append(os.getloadavg()[0])
            print(json.dumps({"round": i + 1, **{k: round(v[-1]["requests_per_s"], 1) for k, v in runs.items()},
                              "load": loads[-1]}), file=sys.stderr, flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=120)
    return _record(results, runs, loads, {"units": units, "layers": layers, "rows_per_request": rows,
                                          "requests": requests, "concurrency": concurrency, "repeats": repeats,
                                          "batch_requests": batch_requests or "default"})


def _record(results: Path, runs: dict[str, list[dict]], loads: list[float], setup: dict) -> dict:
    """The JSON line of one invocation: medians per kind, each kind's per-round ratio to the first."""
    first, *others = runs
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("requests_per_s", "p50_ms", "p99_ms")}
           for k, v in runs.items()}
    ratios = {k: [o["requests_per_s"] / b["requests_per_s"] for b, o in zip(runs[first], runs[k])] for k in others}
    row = {**setup, "kinds": list(runs), **med,
           "pair_ratios": ratios[others[0]] if len(others) == 1 else ratios,
           "errors": {k: sum(r["errors"] for r in v) for k, v in runs.items()},
           "runs": {k: [{m: r[m] for m in ("requests_per_s", "p50_ms", "p99_ms")} for r in v] for k, v in runs.items()},
           "ratio": {k: med[k]["requests_per_s"] / med[first]["requests_per_s"] for k in others},
           "predictions_agree": all(runs[k][0]["predictions"] == runs[first][0]["predictions"] for k in others
                                    if "noop" not in k + first),
           "load_avg": loads, "cpus": os.cpu_count()}
    if len(others) == 1:
        row["ratio"] = row["ratio"][others[0]]
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["full", "smoke", "ceiling"])
    p.add_argument("--kinds", default=None,
                   help="servers, the baseline first (full: bare,ftray; ceiling: bare-noop,serve-noop,serve-noop-tuned); "
                        "also ftray-tuned (SERVE_FLAGS set), ftray-r2 (--replicas 2), ftray-direct (--ingress direct), "
                        "serve-noop-direct")
    p.add_argument("--work", default="/tmp/ftray-serve-bench")
    p.add_argument("--results", default=None, help="JSON lines (default: WORK/results.jsonl)")
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--rows", type=int, default=32, help="rows per request")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--units", type=int, default=2048)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-requests", type=int, default=None,
                   help="ftray serve --batch-requests (default: ftray's own, serve.batch_requests)")
    args = p.parse_args(argv)
    work = Path(args.work)
    if args.mode == "smoke":
        args.requests, args.rows, args.units, args.layers, args.repeats = 16, 4, 16, 1, 1
    kinds = args.kinds or ("bare-noop,serve-noop,serve-noop-tuned" if args.mode == "ceiling" else "bare,ftray")
    row = measure(work, args.units, args.layers, args.rows, args.requests, args.concurrency, args.repeats,
                  Path(args.results or work / "results.jsonl"), args.batch_requests, tuple(kinds.split(",")))
    print(json.dumps(row))
    return 0 if row["predictions_agree"] and not any(row["errors"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
