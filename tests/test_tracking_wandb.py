"""`run.tracking.wandb` in offline mode (no network, no API key): an `ftray run` (and its resume into
the same W&B run id) and a 2-trial packed `ftray sweep` (one W&B run per trial), read back from the
offline runs' `.wandb` files: W&B 0.31 ships no Python reader for them, so `records` below reads
the LevelDB-style log (a 7-byte header, then 32 KiB blocks of chunks) into wandb's own protobuf
`Record`s."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ftray import cli
from tests.conftest import blobs, cli_summary, mlp_spec, write_spec

pytest.importorskip("wandb")

BLOCK = 32 * 1024
FULL, FIRST, LAST = 1, 2, 4


def records(path: Path):
    """The protobuf records of one `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        body, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        chunk = body if kind in (FULL, FIRST) else chunk + body
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(chunk)
            yield record


def offline_runs(where: Path) -> dict[str, list[Path]]:
    """{W&B run id: its offline segments' `.wandb` files, oldest first} under `where/wandb`."""
    out: dict[str, list[Path]] = {}
    for f in sorted((where / "wandb").glob("offline-run-*/run-*.wandb")):
        out.setdefault(f.stem.removeprefix("run-"), []).append(f)
    return out


def read(files: list[Path]) -> dict:
    """What the segments of one offline run hold: config, history rows, summary, name, tags, exits."""
    got = {"config": {}, "history": [], "summary": {}, "exits": [], "name": None, "tags": [], "group": None}
    for f in files:
        for rec in records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                got["name"], got["tags"], got["group"] = rec.run.display_name, list(rec.run.tags), rec.run.run_group
                got["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "history":
                got["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.history.item})
            elif kind == "summary":
                got["summary"].update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in rec.summary.update})
            elif kind == "exit":
                got["exits"].append(rec.exit.exit_code)
    return got


def tracked_spec(tmp_path: Path, name: str) -> Path:
    pq.write_table(blobs(120, seed=3), tmp_path / "d.parquet")
    raw = mlp_spec(tmp_path / "d.parquet", tmp_path / "runs", name, train={"epochs": 2, "batch_size": 32})
    raw["run"]["tracking"] = {"wandb": {"project": "ftray-test", "mode": "offline", "tags": ["t1"]}}
    return write_spec(tmp_path / f"{name}.yaml", raw)


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    """No API key and no W&B settings from the machine: offline must need none."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_run_logs_config_epochs_final_metrics_and_resumes_into_the_same_run(
        ray_session, tmp_path, capsys, no_wandb_key):
    spec = tracked_spec(tmp_path, "wb")
    s = cli_summary(capsys, "run", str(spec))
    folder = tmp_path / "runs" / "wb"
    (run_id,) = offline_runs(folder)
    assert json.loads((folder / "wandb_run.json").read_text())["wandb_run_id"] == run_id
    got = read(offline_runs(folder)[run_id])
    assert got["name"] == "wb" and got["tags"] == ["t1"]
    assert got["config"]["train"]["epochs"] == 2 and got["config"]["model"]["units"] == 16
    assert got["config"]["train"]["optimizer"]["name"] == s["spec"]["train"]["optimizer"]["name"]
    epochs = [h for h in got["history"] if "val_loss" in h]
    assert [h["_step"] for h in epochs] == [1, 2] == [h["epoch"] for h in epochs]
    for key in ("val_loss", "val_accuracy", "train_loss"):
        assert [h[key] for h in epochs] == [pytest.approx(h[key], rel=1e-9) for h in s["history"]], key
    assert got["summary"]["final_val_accuracy"] == pytest.approx(s["metrics"]["val_accuracy"], rel=1e-9)
    assert got["summary"]["ftray_status"] == s["status"]
    assert any(h.get("curves/format") == "png" for h in got["history"]) and got["exits"][-1] == 0
    # More epochs resume the run folder, and with it the same W&B run id: epoch 3 at step 3.
    s2 = cli_summary(capsys, "run", str(spec), "--set", "train.epochs=3")
    assert s2["resumes"] and list(offline_runs(folder)) == [run_id]
    epochs = [h for h in read(offline_runs(folder)[run_id])["history"] if "val_loss" in h]
    assert [h["_step"] for h in epochs] == [1, 2, 3]
    assert epochs[-1]["val_loss"] == pytest.approx(s2["history"][-1]["val_loss"], rel=1e-9)


def test_sweep_logs_each_trial_as_its_own_run_grouped_under_the_sweep(ray_session, tmp_path, capsys, no_wandb_key):
    spec = tracked_spec(tmp_path, "wsw")
    raw = yaml.safe_load(spec.read_text())
    raw["tune"] = {"space": {"train.lr": {"grid": [0.001, 0.1]}}, "metric": "val_loss", "mode": "min",
                   "num_samples": 1, "max_concurrent": 1, "trial": "packed", "searcher": "grid",
                   "scheduler": {"name": "fifo"}}
    write_spec(spec, raw)
    assert cli.main(["sweep", str(spec)]) == 0, capsys.readouterr().err[-3000:]
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    trials = {r["trial_id"]: r for r in csv.DictReader((folder / "trials.csv").open())}
    runs = {run_id: read(files) for run_id, files in offline_runs(folder).items()}
    assert len(runs) == len(trials) == 2
    seen = set()
    for got in runs.values():
        assert got["group"] == "wsw" and got["tags"] == ["t1"]
        lr = float(got["config"]["train.lr"])
        (trial_id,) = [t for t, r in trials.items() if float(r["train.lr"]) == lr]
        seen.add(trial_id)
        own = json.loads((folder / "trials" / trial_id / "summary.json").read_text())["history"]
        assert [h["val_loss"] for h in got["history"] if "val_loss" in h] == [
            pytest.approx(h["val_loss"], rel=1e-6) for h in own]
    assert seen == set(trials)
