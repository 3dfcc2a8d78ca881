"""Security: nothing ftray reads runs code, nothing it writes leaks a secret, nothing it uploads
carries more than the job needs.

- weights load without unpickling arbitrary code: trainer state through `torch.load(weights_only=True)`,
  exported models as safetensors only;
- YAML is loaded safely: no Python tag runs, alias bombs and oversized or absurdly nested
  documents are refused in bounded memory (and without hanging);
- secrets from the environment never reach `summary.json` (one real run on the shared Ray);
- job uploads (`cluster/runtime_env.yaml`) leave out VCS folders, virtualenvs, runs and caches.
"""

from __future__ import annotations

import ast
import json
import pickle
import secrets
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors import safe_open

from ftray import checkpoint, cli
from ftray.models import load_exported
from ftray.models.base import ModelInfo
from ftray.models.mlp import MLP
from ftray.numerics import make_optimizer, make_scheduler
from ftray.redact import MASK, redact, secret_values
from ftray.spec import MAX_SPEC_BYTES, JobSpec, MLPModel, SpecError, load_spec
from tests.conftest import REPO, blobs, mlp_spec, write_spec
from tests.hang import no_hang

PACKAGE = REPO / "ftray"
HANG_S = 120  # a refused bomb or nesting takes milliseconds; only a loop gets near this


# ----------------------------------------------------------------------- weights without pickles
class Payload:
    """Unpickling this creates `marker` (through `open`): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def tiny_mlp() -> MLP:
    return MLP(MLPModel(layers=1, units=4), ModelInfo(task="classification", in_features=3, classes=[0, 1]))


def test_real_trainer_state_loads_with_weights_only(tmp_path):
    """What `checkpoint.save` writes (optimizer, LR schedule, RNG states) is plain tensors and values."""
    spec = JobSpec.model_validate(mlp_spec(tmp_path / "d.parquet", tmp_path,
                                           train={"schedule": {"name": "cosine", "warmup_steps": 2}}))
    model = tiny_mlp()
    optimizer = make_optimizer(spec, [{"params": list(model.parameters()), "lr_scale": 1.0}])
    model({"x": torch.randn(2, 3)}).sum().backward()  # so that the optimizer has state to save
    optimizer.step()
    scheduler = make_scheduler(spec, optimizer, steps_per_epoch=4)
    checkpoint.save(tmp_path, model, optimizer.state_dict(), scheduler, None, {"epoch": 1},
                    spec.model_dump(mode="json"))
    state = checkpoint.load_trainer_state(tmp_path)  # weights_only=True inside
    assert set(state) == {"optimizer", "scheduler", "scaler", "rng"} and state["optimizer"]["state"]


def test_a_malicious_trainer_state_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Payload(marker), "scheduler": {}, "scaler": None, "rng": {}},
               tmp_path / checkpoint.STATE)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoint.load_trainer_state(tmp_path)
    assert not marker.exists()
    # The payload is live: an unrestricted load would have run it.
    torch.load(tmp_path / checkpoint.STATE, weights_only=False)
    assert marker.exists()


def test_exports_are_safetensors_only(tmp_path):
    tiny_mlp().export(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == ["ftray_model.json", "model.safetensors"]
    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(tiny_mlp().state_dict())
    json.loads((tmp_path / "model" / "ftray_model.json").read_text())  # plain JSON, no code


def test_an_export_with_pickled_weights_is_refused_unread(tmp_path):
    """A planted `pytorch_model.bin` (a pickle) in place of safetensors is never opened."""
    marker = tmp_path / "pwned"
    tiny_mlp().export(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()
    torch.save({"classifier.weight": Payload(marker)}, tmp_path / "model" / "pytorch_model.bin")
    with pytest.raises(SpecError, match="safetensors only"):
        load_exported(str(tmp_path))
    assert not marker.exists()


def _calls(tree: ast.AST, dotted: str):
    """Call nodes of `a.b(...)` where the source text of the function is `dotted`."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == dotted]


def test_the_package_never_loads_pickles_or_unsafe_yaml():
    """Every `torch.load` in ftray passes weights_only=True, every `yaml.load` a safe loader, every
    full-model `save_pretrained` safetensors; no module imports pickle-based loaders."""
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    torch_loads = 0
    for path, text in sources.items():
        tree = ast.parse(text)
        for call in _calls(tree, "torch.load"):
            torch_loads += 1
            kw = {k.arg: k.value for k in call.keywords}
            assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, path
        for call in _calls(tree, "yaml.load"):
            kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
            assert kw.get("Loader") in ("_SafeLoader", "yaml.SafeLoader"), path
        for name in ("yaml.unsafe_load", "yaml.full_load", "pickle.load", "pickle.loads", "dill.load",
                     "cloudpickle.load", "cloudpickle.loads", "torch.jit.load", "numpy.load", "np.load"):
            assert not _calls(tree, name), f"{path}: {name}"
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle"} & set(names), path
    assert torch_loads >= 1  # checkpoint.load_trainer_state
    hf = (PACKAGE / "models" / "hf.py").read_text()
    assert "save_pretrained(str(out_dir), safe_serialization=True)" in hf


# -------------------------------------------------------------------------------- safe YAML
BASE = """model: {name: mlp}
data: {path: d.parquet, features: [x]}
run: {name: demo}
"""


def spec_file(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(body)
    return p


@pytest.mark.parametrize("tagged", [
    "!!python/object/apply:os.system ['touch {m}']",
    "!!python/object/apply:builtins.open ['{m}', 'w']",
    "!!python/object/new:builtins.open ['{m}', 'w']",
    "!!python/object:pathlib.Path {{}}",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/tuple [1, 2]",
    "!!python/bytes aGk=",
    "!<tag:yaml.org,2002:python/object/apply:builtins.open> ['{m}', 'w']",
    "!custom {m}",
])
def test_python_tags_do_not_run(tmp_path, tagged):
    marker = tmp_path / "pwned"
    path = spec_file(tmp_path, BASE + "x: " + tagged.format(m=marker) + "\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
    assert not marker.exists()
    # The same tags through --set are refused as well.
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(spec_file(tmp_path, BASE), ["run.name=" + tagged.format(m=marker)])
    assert not marker.exists()


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: `width ** levels` strings (387 million for 9 x 9) from a few lines."""
    lines = ['l0: &l0 "' + "lol" * 10 + '"']
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return BASE + "\n".join(lines) + "\n"


def wide_alias_bomb(n: int = 200_000) -> str:
    """One anchor, hundreds of thousands of aliases to it (just under the size limit)."""
    return BASE + "a: &a [" + ", ".join(["x"] * 100) + "]\nb: [" + ", ".join(["*a"] * n) + "]\n"


def merge_key_bomb() -> str:
    return BASE + "a: &a {x: 1}\nb:\n  <<: *a\n  y: 2\n"


@pytest.mark.parametrize("make", [billion_laughs, wide_alias_bomb, merge_key_bomb])
def test_alias_bombs_are_refused_in_bounded_memory(tmp_path, make):
    body = make()
    assert len(body.encode()) < MAX_SPEC_BYTES  # it gets past the size check: the loader must stop it
    path = spec_file(tmp_path, body)
    tracemalloc.start()
    try:
        # Milliseconds in practice; an expanded bomb would take minutes (the guard is for a hang,
        # the memory bound below is what tells a refused bomb from an expanded one).
        with no_hang(HANG_S, "load_spec"), pytest.raises(SpecError, match="aliases"):
            load_spec(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak >> 20} MiB"  # a few MiB: the text and its first tokens


def test_deep_nesting_is_refused_without_hanging(tmp_path):
    body = "model: " + "[" * 400_000 + "]" * 400_000 + "\n"
    with no_hang(HANG_S, "load_spec"), pytest.raises(SpecError, match="nested deeper than"):
        load_spec(spec_file(tmp_path, body))


def test_an_oversized_spec_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:  # 64 MiB, mostly a hole: cheap to make, costly if read
        f.write(BASE.encode())
        f.truncate(64 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match=f"larger than {MAX_SPEC_BYTES} bytes"):
            load_spec(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# -------------------------------------------------------------------------------- redaction
def test_redact_masks_every_string_holding_a_secret(monkeypatch):
    token, key = "hf_" + secrets.token_hex(12), secrets.token_urlsafe(24)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # secret-looking name, too short to be one
    monkeypatch.setenv("HOME_DIRECTORY_NAME", "classification")  # long, but not a secret's name
    summary = {
        "status": "failed",
        "error": f"OSError: 403 for https://huggingface.co/x?token={token}",
        "metrics": {"val_loss": 0.5, "val_accuracy": 1.0},
        "history": [{"epoch": 1, "note": f"s3://bucket/{key}/x"}],
        "spec": {"data": {"path": f"/data/{token}.parquet", "task": "classification"},
                 "run": {"name": "demo", "seed": 0}},
        f"key-{token}": ("a", f"b{key}c"),
    }
    out = redact(summary)
    assert token not in json.dumps(out) and key not in json.dumps(out)
    assert out["error"] == MASK and out["spec"]["data"]["path"] == MASK
    assert out["history"] == [{"epoch": 1, "note": MASK}] and out[MASK] == ("a", MASK)
    # Everything else is untouched, and the input is not modified.
    assert out["metrics"] == summary["metrics"] and out["spec"]["run"] == summary["spec"]["run"]
    assert out["spec"]["data"]["task"] == "classification" and out["status"] == "failed"
    assert summary["spec"]["data"]["path"].endswith(f"{token}.parquet")
    assert secret_values({"WANDB_API_KEY": "k" * 8, "DB_PASSWORD": "p" * 7, "PATH": "/usr/bin:/bin"}) == ["k" * 8]
    assert redact(summary, secrets=[]) is summary


def test_a_token_in_the_environment_never_reaches_summary_json(ray_session, tmp_path, capsys, monkeypatch):
    """One real run: the token is part of the data file's name, so it is in the resolved spec."""
    token = secrets.token_hex(16)
    monkeypatch.setenv("HF_TOKEN", token)
    data_path = tmp_path / f"data-{token}.parquet"
    pq.write_table(blobs(60), data_path)
    spec = write_spec(tmp_path / "job.yaml", mlp_spec(data_path, tmp_path / "runs", "redacted",
                                                      train={"epochs": 1, "batch_size": 12}))
    code = cli.main(["run", str(spec)])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    run_dir = tmp_path / "runs" / "redacted"
    text = (run_dir / "summary.json").read_text()
    assert token not in text
    summary = json.loads(text)
    assert summary["status"] == "succeeded" and summary["spec"]["data"]["path"] == MASK
    assert summary["metrics"]["val_accuracy"] >= 0 and summary["spec"]["run"]["name"] == "redacted"


# -------------------------------------------------------------------------------- job uploads
def test_job_uploads_exclude_vcs_venv_runs_and_caches(tmp_path):
    """Ray's own upload walk (the code `ray job submit` runs) over a working directory with every
    kind of folder, using only `excludes` from cluster/runtime_env.yaml (not .gitignore)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    shipped = ["README.md", "ftray/train.py", "jobs/quickstart.yaml", "tests/test_spec.py"]
    left_out = [".git/config", ".git/objects/ab/cdef", ".venv/bin/python", ".venv/lib/site.py",
                "runs/demo/summary.json", "runs/demo/checkpoint_000001/trainer_state.pt",
                "ftray/__pycache__/train.cpython-311.pyc", "tests/__pycache__/conftest.cpython-311.pyc",
                ".pytest_cache/v/cache/lastfailed", "ftray.egg-info/PKG-INFO"]
    for rel in shipped + left_out:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    uploaded = []
    _dir_travel(tmp_path, [_get_excludes(tmp_path, env["excludes"])],
                lambda p: p.is_file() and uploaded.append(p.relative_to(tmp_path).as_posix()),
                include_gitignore=False)
    assert sorted(uploaded) == sorted(shipped)
