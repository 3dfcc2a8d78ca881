"""`ftray serve RUN [RUN ...]`: finished models as JSON HTTP endpoints on Ray Serve.

Each model is one Serve application at `/NAME/` (NAME: the run folder's name) with a FastAPI
ingress: `POST /NAME/predict` (`{"rows": [{column: value}, ...]}` -> `{"predictions": [...]}`, in
row order, plus `probabilities` for classifiers), `POST /NAME/generate` for causal LMs, `GET
/NAME/healthz`. The replicas wrap the same `ftray.predict.Predictor` as `ftray.load` and `ftray
predict`, so a row gets the same prediction on all three paths.

LoRA adapter folders (`RUN/model/adapter`) of one base model are served from one deployment at
`/BASE/` with Serve's model multiplexing: the request header `serve_multiplexed_model_id` names the
adapter (its run's name), the router prefers a replica that has it loaded, and a replica keeps
`serve.max_adapters_per_replica` of them (least recently used unloaded).

Bad requests get a 4xx with a one-line reason, never a 500: the body is parsed and checked here
(JSON, `rows` a list of objects, at most `serve.max_rows`, the model's columns, feature widths)
before the model runs. When the cluster uses token authentication, every route but `healthz`
refuses a request without the cluster's token (401) or with another one (403), as Ray's dashboard
does.

`--ingress direct` (one model, one replica, ftray's own local Ray) has that replica answer HTTP on
--port itself, with Serve's proxy off the request path (`direct_ingress_env`).
"""

# No `from __future__ import annotations`: FastAPI reads the route methods' annotations (`Request`,
# imported where the app is built) as objects, and string annotations would not resolve.
import argparse
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from ftray.predict import Generation, RunRef, locate
from ftray.schema import SpecError
from ftray.spec import ServeSpec

DEFAULT_PORT = 8000
INGRESSES = ("proxy", "direct")  # `--ingress`: who listens on --port (see `direct_ingress_env`)
ADAPTER_HEADER = "serve_multiplexed_model_id"  # Serve's own multiplexing header (routing uses it)


# ================================================================= what is served where
@dataclass
class Endpoint:
    """One Serve application: a model (or several adapters of one base) under `/name/`."""
    name: str
    runs: dict[str, str]  # model (adapter) name -> RUN path
    settings: ServeSpec
    adapters: bool = False  # several LoRA adapters, chosen per request (model multiplexing)


def plan(runs: list[str], overrides: dict | None = None) -> list[Endpoint]:
    """The endpoints for RUNs (SpecError, exit 2, before Ray starts): one per model, adapters of
    one base grouped into one; `overrides` (flags) win over each run's `serve:` section."""
    refs = [(run, locate(run, f"RUN {run}")) for run in runs]
    groups: dict[str, list[tuple[str, RunRef]]] = {}
    singles = []
    for run, ref in refs:
        if ref.adapter is None:
            singles.append(Endpoint(ref.folder.name, {ref.folder.name: run}, _settings(ref, overrides)))
        else:
            groups.setdefault(_base_name(ref), []).append((run, ref))
    grouped = [Endpoint(base, {ref.folder.name: run for run, ref in members},
                        _settings(members[0][1], overrides), adapters=True) for base, members in groups.items()]
    endpoints = singles + grouped
    for e in grouped:
        if len(e.runs) < len(groups[e.name]):
            raise SpecError(f"RUN: two adapters of base {e.name!r} have the same run name; rename one")
    names = [e.name for e in endpoints]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise SpecError(f"RUN: two models would both be served at /{dup}/ (same run or base name); rename one")
    return endpoints


def _base_name(ref: RunRef) -> str:
    from ftray.models.hf import resolve_source
    return Path(resolve_source(ref.spec)).name


def _settings(ref: RunRef, overrides: dict | None) -> ServeSpec:
    from pydantic import ValidationError
    try:
        return ServeSpec.model_validate({**ref.spec.serve.model_dump(), **(overrides or {})})
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")  # a rule across fields names its keys itself
        where = ".".join(["serve", *map(str, err["loc"])]) + ": " if err["loc"] else ""
        raise SpecError(f"{where}{msg} (RUN {ref.folder})") from None


# ======================================================================= the request checks
class BadRequest(Exception):
    """A request the model cannot answer: HTTP `status` with a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason.splitlines()[0] if reason else "bad request"


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body; BadRequest 400 otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"body is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise BadRequest(400, f"body must be a JSON object, not {type(body).__name__}")
    return body


def parse_rows(body: dict, max_rows: int) -> list[dict]:
    """`rows`: a list of objects, at most `max_rows`; BadRequest otherwise."""
    extra = sorted(set(body) - {"rows"})
    if extra:
        raise BadRequest(422, f"unknown key {extra[0]!r} (the body is {{\"rows\": [...]}})")
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise BadRequest(422, "'rows' must be a list of objects, one per row")
    if len(rows) > max_rows:
        raise BadRequest(413, f"{len(rows)} rows; at most {max_rows} per request")
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise BadRequest(422, f"row {bad}: must be an object of column: value")
    return rows


GENERATE_KEYS = {"prompts", "max_new_tokens", "temperature", "stop", "seed"}


def parse_generate(body: dict, max_rows: int, max_new_tokens: int, default: Generation) -> tuple[list[str], Generation]:
    """`/generate`'s body: `prompts` (strings) and optional generation settings."""
    extra = sorted(set(body) - GENERATE_KEYS)
    if extra:
        raise BadRequest(422, f"unknown key {extra[0]!r} (keys: {', '.join(sorted(GENERATE_KEYS))})")
    prompts = body.get("prompts")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest(422, "'prompts' must be a list of strings")
    if len(prompts) > max_rows:
        raise BadRequest(413, f"{len(prompts)} prompts; at most {max_rows} per request")
    n = body.get("max_new_tokens", default.max_new_tokens)
    t = body.get("temperature", default.temperature)
    stop, seed = body.get("stop", default.stop), body.get("seed", default.seed)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_new_tokens:
        raise BadRequest(422, f"'max_new_tokens' must be an integer from 1 to {max_new_tokens}")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= 100:
        raise BadRequest(422, "'temperature' must be a number from 0 to 100")
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest(422, "'stop' must be a list of strings")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise BadRequest(422, "'seed' must be an integer")
    return prompts, Generation(n, float(t), stop, seed)


def check_token(headers) -> None:
    """BadRequest 401/403 unless the cluster's token came with the request (when the cluster uses
    token authentication), from `Authorization` or `X-Ray-Authorization` as Ray's dashboard takes it."""
    from ray._private.authentication import authentication_utils as auth
    if not auth.is_token_auth_enabled():
        return
    given = headers.get("authorization") or headers.get("x-ray-authorization") or ""
    if not given:
        raise BadRequest(401, "missing authentication token (Authorization: Bearer <the cluster's token>)")
    if not auth.validate_request_token(given):
        raise BadRequest(403, "invalid authentication token")


def predict_rows(predictor, rows: list[dict]) -> dict:
    """The JSON answer for `rows`; the predictor's own input errors become 422 with their reason."""
    import pyarrow as pa
    if not rows:
        return {"predictions": []}
    try:
        out = predictor.predict_columns(rows)
    except (SpecError, pa.ArrowException, ValueError, TypeError, KeyError) as e:
        raise BadRequest(422, str(e) or type(e).__name__) from None
    return answer_of(out)


def answer_of(out: dict) -> dict:
    """The JSON answer of a predictor's output columns for one request's rows (at least one)."""
    answer = {"predictions": out["prediction"].tolist()}
    if "probabilities" in out:
        answer["probabilities"] = out["probabilities"].tolist()
    return answer


def predict_many(predictor, requests: list[list[dict]]) -> list:
    """The answers to several requests' rows from one model call (their rows concatenated, the
    outputs split back in order); if that call refuses the rows, each request is answered alone,
    so that one bad request gets its own 4xx and the others their predictions. An answer is a
    dict, or the BadRequest of that request."""
    import numpy as np
    sizes = [len(rows) for rows in requests]
    try:
        out = predictor.predict_columns([r for rows in requests for r in rows]) if sum(sizes) else None
    except Exception:  # noqa: BLE001 - each request is answered (or refused) on its own below
        out = None
    if out is None:
        answers = []
        for rows in requests:
            try:
                answers.append(predict_rows(predictor, rows))
            except BadRequest as e:
                answers.append(e)
        return answers
    parts = {k: np.split(v, np.cumsum(sizes)[:-1]) for k, v in out.items()}
    return [answer_of({k: v[i] for k, v in parts.items()}) if n else {"predictions": []} for i, n in enumerate(sizes)]


# ============================================================================ the deployment
def deployment_options(s: ServeSpec) -> dict:
    """`serve.deployment` options from the settings: fixed replicas, or an autoscaling range.

    A replica runs one model call at a time; Serve's default of 5 ongoing requests per replica
    makes the proxy hold back a sixth concurrent request and poll again (with back-off) instead
    of queueing it at the replica. Access logs are a log line per request in the proxy and the
    replica (benchmarks/RESULTS.md: requests/s before and after the two)."""
    opts = {"ray_actor_options": {"num_cpus": s.cpus_per_replica}, "max_ongoing_requests": s.max_ongoing_requests,
            "logging_config": {"enable_access_log": s.access_log}}
    if s.max_replicas is None:
        return {**opts, "num_replicas": s.replicas}
    return {**opts, "autoscaling_config": {"min_replicas": s.replicas, "max_replicas": s.max_replicas,
                                           "target_ongoing_requests": s.target_ongoing_requests}}


async def _bad_request(request, e: BadRequest):
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": e.reason}, status_code=e.status)


def application(endpoint: Endpoint):
    """The Serve application of one endpoint: a FastAPI ingress over `ModelServer` replicas.

    Built here, not at import, so that `ftray` without a serve command never imports FastAPI."""
    from fastapi import FastAPI, Request
    from ray import serve
    from starlette.concurrency import run_in_threadpool

    api, s = FastAPI(title=f"ftray {endpoint.name}"), endpoint.settings
    api.add_exception_handler(BadRequest, _bad_request)

    @serve.deployment(name="ModelServer", **deployment_options(s))
    @serve.ingress(api)
    class ModelServer:
        def __init__(self, endpoint: Endpoint):
            import torch

            from ftray.predict import load
            torch.set_num_threads(max(1, int(endpoint.settings.cpus_per_replica)))
            self.endpoint = endpoint
            # One model call at a time per replica: Hugging Face fast tokenizers are not thread-safe
            # and torch already uses the replica's CPUs; more replicas give more parallel calls.
            self.lock = threading.Lock()
            self.single = None if endpoint.adapters else load(next(iter(endpoint.runs.values())))

        @serve.multiplexed(max_num_models_per_replica=s.max_adapters_per_replica)
        async def adapter(self, name: str):
            from ftray.predict import load
            return await run_in_threadpool(load, self.endpoint.runs[name])

        async def predictor(self):
            if not self.endpoint.adapters:
                return self.single
            name, known = serve.get_multiplexed_model_id(), ", ".join(self.endpoint.runs)
            if not name:
                raise BadRequest(400, f"no adapter chosen: send the header {ADAPTER_HEADER}: one of {known}")
            if name not in self.endpoint.runs:
                raise BadRequest(404, f"unknown adapter {name!r} (served: {known})")
            return await self.adapter(name)

        def locked(self, fn, *args):
            with self.lock:
                return fn(*args)

        @api.get("/healthz")
        def healthz(self) -> dict:
            return {"status": "ok", "models": list(self.endpoint.runs)}

        @serve.batch(max_batch_size=s.batch_requests, batch_wait_timeout_s=s.batch_wait_ms / 1000)
        async def predict_batch(self, requests: list[list[dict]]) -> list:
            # Concurrent requests of one model answered by one model call: its fixed cost (the
            # thread hop, the transform, a small matrix product) paid once for all of them.
            return await run_in_threadpool(self.locked, predict_many, self.single, requests)

        @api.post("/predict")
        async def predict(self, request: Request) -> dict:
            check_token(request.headers)
            rows = parse_rows(parse_body(await request.body()), s.max_rows)
            if self.endpoint.adapters or s.batch_requests == 1:
                return await run_in_threadpool(self.locked, predict_rows, await self.predictor(), rows)
            answer = await self.predict_batch(rows)
            if isinstance(answer, BadRequest):
                raise answer
            return answer

        @api.post("/generate")
        async def generate(self, request: Request) -> dict:
            check_token(request.headers)
            body = parse_body(await request.body())
            predictor = await self.predictor()
            if predictor.task != "causal_lm":
                raise BadRequest(404, f"/generate is for causal LMs; this is a {predictor.task} model (POST /predict)")
            prompts, generation = parse_generate(body, s.max_rows, s.max_new_tokens, predictor.generation)
            texts = await run_in_threadpool(self.locked, predictor.generate, prompts, generation)
            return {"generations": texts}

    return ModelServer.bind(endpoint)


def direct_ingress_env(port: int) -> dict[str, str]:
    """The environment of a local Ray whose one ingress replica answers HTTP on `port` itself.

    Serve's direct ingress (ray/serve/_private/replica.py `_maybe_start_direct_ingress_servers`):
    the ingress replica starts its own uvicorn server, on the host of Serve's `http_options` and a
    port the controller hands out from [MIN, MAX) (MAX excluded); requests skip the proxy and the
    actor call from it (benchmarks/RESULTS.md: requests/s with and without). Serve's controller
    and replicas read these at import, so they must be in the environment of the Ray processes:
    set before the local Ray starts, whose workers inherit it. The proxy still starts on the head
    node (on another port, unused). Serve holds a direct-ingress replica open 30 s at shutdown for
    an outside load balancer to drop it; nothing is in front here, so no wait."""
    return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}


def check_direct(endpoints: list[Endpoint], address: str | None) -> None:
    """What `--ingress direct` cannot do (SpecError, exit 2, before Ray starts): each replica
    listens on a port of its own with nothing balancing requests across them, so one model on
    one replica; and only ftray's own local Ray carries its environment (`direct_ingress_env`)."""
    import ray

    from ftray.ray_context import cluster_address
    if len(endpoints) > 1:
        raise SpecError(f"--ingress direct: one model per `ftray serve` (each would need a port of its own); got "
                        f"{len(endpoints)}: {', '.join(e.name for e in endpoints)}; use --ingress proxy")
    s = endpoints[0].settings
    if s.replicas > 1 or s.max_replicas not in (None, 1):
        raise SpecError(f"--ingress direct: one replica (serve.replicas {s.replicas}, serve.max_replicas "
                        f"{s.max_replicas}): each replica would listen on a port of its own with nothing "
                        "balancing requests across them; use --ingress proxy")
    if cluster_address(address) or ray.is_initialized():
        raise SpecError("--ingress direct: needs the local Ray `ftray serve` starts itself (Serve reads it where "
                        "its controller and replicas start); drop --address / RAY_ADDRESS or use --ingress proxy")


def _free_port(host: str) -> int:
    import socket
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start(endpoints: list[Endpoint], host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          ingress: str = "proxy") -> list[str]:
    """Deploy every endpoint on the Ray this process is connected to; their URLs (`http://HOST:PORT/NAME`).
    `ingress` "direct" (a Ray started with `direct_ingress_env(port)`): the replica listens on
    `port`, Serve's proxy on a free port."""
    from ray import serve
    proxy_port = _free_port(host) if ingress == "direct" else port
    # The proxy's own access log: on when any endpoint asks for it (the proxy is shared).
    serve.start(http_options={"host": host, "port": proxy_port},
                logging_config={"enable_access_log": any(e.settings.access_log for e in endpoints)})
    for e in endpoints:
        serve.run(application(e), name=e.name, route_prefix=f"/{e.name}", blocking=False)
    return [f"http://{host}:{port}/{e.name}" for e in endpoints]


# ================================================================================= the CLI
def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `ftray serve` on the top-level subparsers."""
    p = sub.add_parser("serve", help="finished runs' models as JSON HTTP endpoints (Ray Serve)")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders (or model/, model/adapter/, a sweep with an ensemble); adapters of one base share a deployment")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    p.add_argument("--replicas", type=int, default=None, help="replicas per model (default: serve.replicas, 1)")
    p.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many replicas")
    p.add_argument("--max-rows", type=int, default=None, help="most rows per request (default: serve.max_rows, 1024)")
    p.add_argument("--batch-requests", type=int, default=None,
                   help="concurrent requests answered by one model call (default: serve.batch_requests, 1)")
    p.add_argument("--ingress", choices=INGRESSES, default="proxy",
                   help="who answers on --port: Serve's HTTP proxy (default), or the model's one replica itself "
                        "(Serve's direct ingress: one model, one replica, ftray's own local Ray)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")


def overrides(args) -> dict:
    """The flags that override the runs' `serve:` sections."""
    flags = {"replicas": args.replicas, "max_replicas": args.max_replicas, "max_rows": args.max_rows,
             "batch_requests": args.batch_requests}
    return {k: v for k, v in flags.items() if v is not None}


def cmd_serve(args) -> int:
    """Serve until interrupted (Ctrl-C): Serve shuts down, and a local Ray started here stops."""
    import math

    from ray import serve

    from ftray.ray_context import use_ray
    if not 0 < args.port < 65536:
        raise SpecError(f"--port: {args.port}: not a TCP port")
    endpoints = plan(args.runs, overrides(args))
    if args.ingress == "direct":
        check_direct(endpoints, args.address)
        os.environ.update(direct_ingress_env(args.port))  # before `use_ray`: its processes inherit it
    spec = locate(next(iter(endpoints[0].runs.values()))).spec
    cpus = math.ceil(sum((e.settings.max_replicas or e.settings.replicas) * e.settings.cpus_per_replica
                         for e in endpoints)) + 1
    with use_ray(spec, args.address, cpus=cpus):
        try:
            for e, url in zip(endpoints, start(endpoints, args.host, args.port, args.ingress)):
                print(f"[ftray] serve: {', '.join(e.runs)} at {url}/predict", file=sys.stderr, flush=True)
            if args.ingress == "direct":
                print(f"[ftray] serve: direct ingress: the replica answers on port {args.port} itself "
                      "(Serve's proxy is not on the path)", file=sys.stderr, flush=True)
            print(f"http://{args.host}:{args.port}", flush=True)
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()
    return 0
