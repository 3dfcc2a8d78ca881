"""`ftray serve` (ftray/serve.py) on real runs and real HTTP on 127.0.0.1: the same outputs as
`ftray predict` and `ftray.load`, two LoRA adapters of one base from one deployment, generation,
4xx answers for bad requests, token authentication, load at concurrency 8 with bad bodies mixed in,
and a replica killed under load."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import pyarrow.parquet as pq
import pytest

import ftray
from ftray import auth, cli, serve
from ftray.spec import ServeSpec
from tests.conftest import cli_last_line as _run
from tests.conftest import texts
from tests.hang import no_hang
from tests.ray_head import client_env

# A killed replica fails the requests it holds (at most its in-flight ones: the load runs 8 at
# a time); the stated bound leaves room for the proxy's view of the dead replica lagging a little.
KILL_FAILURE_BOUND = 0.10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body=None, headers: dict | None = None, token: bool = True, timeout: float = 60) -> tuple[int, dict]:
    """(status, JSON answer) of GET (no body) or POST `body` (bytes as they are, else JSON)."""
    raw = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(auth.auth_headers() if token else {}), **(headers or {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=raw, headers=h), timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"error": text.decode(errors="replace")}


@pytest.fixture(scope="module")
def runs(digits_runs, lora_runs, llm_run):
    """Every kind `ftray serve` serves, from the finished runs test_predict.py also uses: the
    quickstart, a 2-trial packed sweep with an averaged ensemble, two LoRA runs of one tiny BERT
    and a tiny causal LM."""
    quick, ens, val, tmp = digits_runs
    llm, rows, _, _ = llm_run
    return {"quick": quick, "ens": ens, "loras": [r / "model" / "adapter" for r in lora_runs], "llm": llm,
            "val": val, "tmp": tmp, "prompts": [r["prompt"] for r in rows[:4]]}


@pytest.fixture(scope="module")
def served(runs):
    """Every run served at once: the quickstart on 2 replicas (the fault test kills one) that batch
    up to 4 concurrent requests into one model call (so the load tests go through `@serve.batch`)."""
    from ray import serve as ray_serve
    port = _free_port()
    endpoints = (serve.plan([str(runs["quick"])], {"replicas": 2, "batch_requests": 4})
                 + serve.plan([str(runs["ens"]), *map(str, runs["loras"]), str(runs["llm"])]))
    with no_hang(600, "serve start"):
        urls = serve.start(endpoints, port=port)
    yield {e.name: u for e, u in zip(endpoints, urls)}
    ray_serve.shutdown()


def _rows(runs, n: int | None = None) -> list[dict]:
    pixels = pq.read_table(runs["val"]).column("pixels").to_pylist()
    return [{"pixels": p} for p in pixels[:n]]


def test_predict_answers_as_ftray_predict(runs, served):
    out = _run("predict", str(runs["quick"]), "--data", str(runs["val"]), "--out", str(runs["tmp"] / "p.parquet"))
    want = pq.read_table(out)
    status, got = request(f"{served['quickstart']}/predict", {"rows": _rows(runs)})
    assert status == 200 and len(got["predictions"]) == 180
    assert got["predictions"] == want.column("prediction").to_pylist()  # same classes, in row order
    assert np.allclose(got["probabilities"], want.column("probabilities").to_pylist(), atol=1e-6)
    # The sweep's ensemble is one model: its combined prediction, as ftray.load gives it.
    status, ens = request(f"{served['ens']}/predict", {"rows": _rows(runs, 20)})
    local = ftray.load(str(runs["ens"])).predict_columns(_rows(runs, 20))
    assert status == 200 and ens["predictions"] == local["prediction"].tolist()
    assert np.allclose(ens["probabilities"], local["probabilities"], atol=1e-6)
    assert request(f"{served['quickstart']}/healthz", token=False) == (200, {"status": "ok", "models": ["quickstart"]})
    assert request(f"{served['quickstart']}/predict", {"rows": []}) == (200, {"predictions": []})


def test_two_adapters_of_one_base_from_one_deployment(runs, served):
    from ray import serve as ray_serve
    name = next(n for n in served if n.startswith("tiny_bert"))  # the base's folder name is the route
    app = ray_serve.status().applications[name]
    assert list(app.deployments) == ["ModelServer"]  # both adapters, one deployment
    rows = [{"text": r["text"]} for r in texts(10, seed=3)]
    answers = {}
    for adapter in runs["loras"]:
        run_name = adapter.parents[1].name
        status, got = request(f"{served[name]}/predict", {"rows": rows}, {serve.ADAPTER_HEADER: run_name})
        local = ftray.load(str(adapter)).predict_columns(rows)
        assert status == 200 and got["predictions"] == local["prediction"].tolist()
        assert np.allclose(got["probabilities"], local["probabilities"], atol=1e-5)
        answers[run_name] = np.array(got["probabilities"])
    assert not np.allclose(answers["lora_a"], answers["lora_b"], atol=1e-3)  # the header chose the adapter
    status, err = request(f"{served[name]}/predict", {"rows": rows}, {serve.ADAPTER_HEADER: "lora_z"})
    assert status == 404 and err["error"] == "unknown adapter 'lora_z' (served: lora_a, lora_b)"
    status, err = request(f"{served[name]}/predict", {"rows": rows})
    assert status == 400 and err["error"].startswith(f"no adapter chosen: send the header {serve.ADAPTER_HEADER}")


def test_generate_is_the_predictors_generation(runs, served):
    url = served["llm_sft"]
    local = ftray.load(str(runs["llm"]))
    want = local.generate(runs["prompts"], ftray.predict.Generation(max_new_tokens=6))
    assert request(f"{url}/generate", {"prompts": runs["prompts"], "max_new_tokens": 6}) == (200, {"generations": want})
    # /predict on an LM generates with the run's defaults, as `ftray predict` does
    status, got = request(f"{url}/predict", {"rows": [{"prompt": p} for p in runs["prompts"]]})
    assert status == 200 and got["predictions"] == local.predict([{"prompt": p} for p in runs["prompts"]])
    assert request(f"{url}/generate", {"prompts": ["x"], "max_new_tokens": 100000}) == (
        422, {"error": "'max_new_tokens' must be an integer from 1 to 256"})
    assert request(f"{served['quickstart']}/generate", {"prompts": ["x"]}) == (
        404, {"error": "/generate is for causal LMs; this is a classification model (POST /predict)"})


BAD = [  # (body, status, reason): each answered without touching the model's replica health
    (b"{not json", 400, "body is not JSON"),
    (b"[1, 2]", 400, "body must be a JSON object, not list"),
    ({"row": []}, 422, "unknown key 'row'"),
    ({"rows": {"pixels": []}}, 422, "'rows' must be a list of objects, one per row"),
    ({"rows": [1]}, 422, "row 0: must be an object of column: value"),
    ({"rows": [{"x": [1.0]}]}, 422, "rows: no column 'pixels' (the model reads pixels; columns: x)"),
    ({"rows": [{"pixels": [1.0, 2.0]}]}, 422, "rows: features pixels give 2 values per row, the model reads 64"),
    ({"rows": [{"pixels": [0.0] * 64}, {"pixels": [0.0] * 3}]}, 422, "feature 'pixels' has 3 values, row 0 has 64"),
    ({"rows": [{"pixels": ["a"] * 64}]}, 422, "not numbers"),
    ({"rows": [{"pixels": [0.0] * 64}] * 1025}, 413, "1025 rows; at most 1024 per request"),
]


@pytest.mark.parametrize("body,status,reason", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_requests_get_a_4xx_with_a_reason(served, body, status, reason):
    got_status, got = request(f"{served['quickstart']}/predict", body)
    assert got_status == status and reason in got["error"] and "\n" not in got["error"]


def test_token_authentication(served, runs):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    assert is_token_auth_enabled()  # the test session's ray.init turns token auth on
    url, body = f"{served['quickstart']}/predict", {"rows": _rows(runs, 2)}
    assert request(url, body, token=False)[0] == 401
    assert request(url, body, token=False, headers={"Authorization": "Bearer wrong"})[0] == 403
    assert request(url, body, token=False, headers={"X-Ray-Authorization": auth.auth_headers()["Authorization"]})[0] == 200
    assert request(url, body)[0] == 200


def _load(url: str, bodies: list, workers: int = 8, done: list | None = None) -> list[tuple[int, dict, float]]:
    """Every body POSTed by `workers` threads; (status, answer, seconds) in body order. `done`
    collects each status as it comes (another thread watches the progress)."""
    def one(body):
        t0 = time.perf_counter()
        try:
            status, answer = request(url, body, timeout=120)
        except OSError as e:  # a connection reset or refused by a dying replica's proxy path
            status, answer = 0, {"error": str(e)}
        if done is not None:
            done.append(status)
        return status, answer, time.perf_counter() - t0
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, bodies))


def test_load_at_concurrency_8_with_bad_bodies_mixed_in(runs, served):
    rows = _rows(runs, 16)
    want = ftray.load(str(runs["quick"])).predict(rows)
    # 240 good requests of 16 rows and, every 5th, a body that is not JSON or has the wrong column
    bodies = [{"rows": rows} if i % 5 else (b"{oops" if i % 10 else {"rows": [{"x": 1}]}) for i in range(300)]
    with no_hang(600, "load test"):
        results = _load(f"{served['quickstart']}/predict", bodies)
    good = [r for b, r in zip(bodies, results) if isinstance(b, dict) and "rows" in b and b["rows"] is rows]
    bad = [r for b, r in zip(bodies, results) if not (isinstance(b, dict) and b["rows"] is rows)]
    assert len(good) == 240 and all(s == 200 and a["predictions"] == want for s, a, _ in good)
    assert sorted({s for s, _, _ in bad}) == [400, 422] and len(bad) == 60
    lat = sorted(t for _, _, t in good)
    print(f"\n[serve load] 240 good + 60 bad requests at concurrency 8: 0 errors, "
          f"p50 {statistics.median(lat) * 1000:.1f} ms, p99 {lat[int(0.99 * len(lat)) - 1] * 1000:.1f} ms")


def test_batched_requests_answer_as_each_alone(runs):
    """`@serve.batch`'s one model call for several requests gives each request its own answer; a
    bad request among them gets its 4xx, the others their predictions."""
    predictor, rows = ftray.load(str(runs["quick"])), _rows(runs, 10)
    requests = [rows[:3], rows[3:4], [], rows[4:10]]
    alone = [serve.predict_rows(predictor, r) for r in requests]
    together = serve.predict_many(predictor, requests)
    assert [a["predictions"] for a in together] == [a["predictions"] for a in alone]
    assert [len(a["predictions"]) for a in together] == [3, 1, 0, 6] and "probabilities" not in together[2]
    for a, b in zip(together, alone):
        assert np.allclose(a.get("probabilities", []), b.get("probabilities", []), atol=1e-6)
    mixed = serve.predict_many(predictor, [rows[:2], [{"x": 1}], rows[2:5]])
    assert isinstance(mixed[1], serve.BadRequest) and mixed[1].status == 422 and "no column 'pixels'" in mixed[1].reason
    assert mixed[0]["predictions"] == alone[0]["predictions"][:2]
    assert mixed[2]["predictions"] == serve.predict_rows(predictor, rows[2:5])["predictions"]


def _replicas(app: str) -> list[str]:
    """The names of the app's live replica actors, asked of this session's Ray (the state API's
    address lookup may find other Rays that run on a shared machine)."""
    import ray
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app}#"))


def test_a_replica_killed_under_load(runs, served):
    import ray
    from ray import serve as ray_serve
    url, rows = f"{served['quickstart']}/predict", _rows(runs, 8)
    before = _replicas("quickstart")
    assert len(before) == 2
    results, done, total = [], [], 300
    loader = threading.Thread(target=lambda: results.extend(_load(url, [{"rows": rows}] * total, done=done)))
    with no_hang(600, "replica kill under load"):
        loader.start()
        while len(done) < 50:  # kill once the load is well under way
            time.sleep(0.05)
        victim = before[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = len(done)
        loader.join()
        assert killed_at < total - 50  # the kill happened under load, not after it
        failed = [s for s, _, _ in results if s != 200]
        assert len(results) == total and len(failed) <= KILL_FAILURE_BOUND * total, failed
        # Serve replaces the replica: two healthy replicas again, and every request succeeds
        while True:
            dep = ray_serve.status().applications["quickstart"].deployments["ModelServer"]
            alive = _replicas("quickstart")
            if dep.replica_states.get("RUNNING", 0) == 2 and len(alive) == 2 and victim not in alive:
                break
            time.sleep(0.5)
        after = _load(url, [{"rows": rows}] * 40)
    assert all(s == 200 for s, _, _ in after)
    print(f"\n[serve fault] one of 2 replicas killed under load: {len(failed)} of {total} requests failed "
          f"(bound {KILL_FAILURE_BOUND:.0%}), then 40 of 40 succeeded on the replaced replica")


def test_settings_flags_and_bad_runs(runs, served, no_ray, capsys):
    from ray import serve as ray_serve
    assert serve.deployment_options(ServeSpec(replicas=2)) == {
        "ray_actor_options": {"num_cpus": 1.0}, "num_replicas": 2, "max_ongoing_requests": 32,
        "logging_config": {"enable_access_log": False}}
    assert (ServeSpec().batch_requests, ServeSpec().batch_wait_ms) == (1, 2.0)
    opts = serve.deployment_options(ServeSpec(max_ongoing_requests=7, access_log=True))
    assert opts["max_ongoing_requests"] == 7 and opts["logging_config"] == {"enable_access_log": True}
    assert serve.deployment_options(ServeSpec(replicas=1, max_replicas=3, target_ongoing_requests=4))[
        "autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4.0}
    # Two replicas, once Serve has settled: a replica it replaced (a failed health check on a
    # loaded machine, or the kill test above) is STARTING for a while before it is RUNNING.
    deadline, states = time.monotonic() + 180, {}
    while time.monotonic() < deadline:
        states = ray_serve.status().applications["quickstart"].deployments["ModelServer"].replica_states
        if states == {"RUNNING": 2}:
            break
        time.sleep(0.5)
    assert states == {"RUNNING": 2}
    for argv, message in (
            ([str(runs["tmp"] / "nope")], "no such folder"),
            ([str(runs["quick"]), "--replicas", "3", "--max-replicas", "2"], "serve.max_replicas: 2 is below"),
            ([str(runs["quick"]), str(runs["quick"] / "model")], "both be served at /quickstart/"),
            ([str(runs["quick"]), "--port", "70000"], "--port: 70000"),
            ([str(runs["quick"]), "--batch-requests", "0"], "serve.batch_requests: Input should be greater than or equal to 1"),
            ([str(runs["quick"]), "--ingress", "direct", "--replicas", "2"], "--ingress direct: one replica"),
            ([str(runs["quick"]), str(runs["ens"]), "--ingress", "direct"], "--ingress direct: one model"),
            ([str(runs["quick"]), "--ingress", "direct"], "--ingress direct: needs the local Ray")):
        assert cli.main(["serve", *argv]) == 2
        assert message in capsys.readouterr().err


def _healthy(url: str) -> bool:
    try:
        return request(url, token=False, timeout=5)[0] == 200
    except OSError:  # not listening yet
        return False


def _direct_cases(runs, served, kind: str) -> tuple[list[str], str, list[tuple[dict, dict]]]:
    """RUN arguments, the endpoint's name and (body, headers) of each request: the quickstart, or
    the two LoRA adapters of one base (model multiplexing: the header picks the adapter)."""
    if kind == "model":
        return [str(runs["quick"])], "quickstart", [({"rows": _rows(runs, n)}, {}) for n in (1, 8, 32, 180)] * 5
    rows = [{"text": r["text"]} for r in texts(10, seed=3)]
    return ([str(a) for a in runs["loras"]], next(n for n in served if n.startswith("tiny_bert")),
            [({"rows": rows[:n]}, {serve.ADAPTER_HEADER: a.parents[1].name}) for a in runs["loras"] for n in (1, 10)] * 3)


@pytest.mark.parametrize("kind", ["model", pytest.param("adapters", marks=pytest.mark.slow)])
def test_direct_ingress_answers_as_the_proxy(runs, served, tmp_path, kind):
    """`ftray serve --ingress direct` (its own local Ray, Serve's direct ingress): the replica
    itself answers on --port of 127.0.0.1, with the proxy path's answers, the token check included;
    Ctrl-C stops it."""
    argv, name, cases = _direct_cases(runs, served, kind)
    port, log = _free_port(), tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "ftray", "serve", *argv, "--port", str(port), "--ingress", "direct"],
                            env=client_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}/{name}"
    try:
        with no_hang(420, "direct ingress start"):
            while not _healthy(f"{url}/healthz"):
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
        with no_hang(300, "direct ingress requests"), ThreadPoolExecutor(4) as pool:
            direct = list(pool.map(lambda c: request(f"{url}/predict", *c), cases))
            proxy = list(pool.map(lambda c: request(f"{served[name]}/predict", *c), cases))
            assert request(f"{url}/predict", cases[0][0], cases[0][1], token=False)[0] == 401
            assert request(f"{url}/predict", cases[0][0], {**cases[0][1], "Authorization": "Bearer x"}, token=False)[0] == 403
        assert all(s == 200 for s, _ in direct + proxy)
        for (_, d), (_, p) in zip(direct, proxy):
            assert d["predictions"] == p["predictions"]
            assert np.allclose(d["probabilities"], p["probabilities"], atol=1e-5)
        assert f"direct ingress: the replica answers on port {port} itself" in log.read_text()
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Serve shuts down, the local Ray stops
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
