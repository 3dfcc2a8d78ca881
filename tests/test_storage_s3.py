"""Object-store URIs end to end, against a real S3-compatible server on 127.0.0.1 (moto's server
mode, tests/s3_server.py): `data.path` and `data.val_path` read from `s3://`, the whole run folder
written to `s3://` and resumed from there, and a missing object stopped before Ray starts.

The `ftray run`s here are a process of their own: the endpoint reaches pyarrow through
`AWS_ENDPOINT_URL` in the environment, which the embedded Ray and every worker inherit (the shared
test Ray was started without it)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from ftray import checkpoint, cli, data
from ftray.models import load_exported
from tests.conftest import REPO, blobs, mlp_spec, write_spec
from tests.s3_server import S3Server, process_env

BUCKET = "ftray-test"
RUN_DIR = f"{BUCKET}/runs/s3run"
# Two `ftray run`s of SPEC in one process, on one embedded Ray (each run finds it started): the
# first with the small-data shortcut off, so that Ray Data tasks in Ray's workers read both Parquet
# files from S3 (as they do for data over 64 MiB); the second with one more epoch. After each, the
# run's summary.json is copied to OUT/summary_<i>.json.
TWO_RUNS = """
import sys
import pyarrow.fs as pafs
import ray
from ftray import cli, data
spec, out, summary = sys.argv[1:]
ray.init(num_cpus=3, include_dashboard=False)
for i, extra in enumerate([[], ["--set", "train.epochs=3"]]):
    data.TRANSFORM_HERE_BYTES = 0 if i == 0 else 64 << 20
    code = cli.main(["run", spec, *extra])
    fs, path = pafs.FileSystem.from_uri(summary)
    pafs.copy_files(path, f"{out}/summary_{i}.json", source_filesystem=fs)
    if code:
        sys.exit(code)
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server.start(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        server.create_bucket(BUCKET)
        fs = server.filesystem()
        pq.write_table(blobs(64, seed=1), f"{BUCKET}/data/train.parquet", filesystem=fs)
        pq.write_table(blobs(16, seed=2), f"{BUCKET}/data/val.parquet", filesystem=fs)
        yield server
    finally:
        server.stop()


def s3_spec(tmp_path, name: str, **data_fields) -> dict:
    """An mlp job whose data and run folder both live in the test bucket (nothing on local disk)."""
    return mlp_spec(f"s3://{BUCKET}/data/train.parquet", tmp_path, name,
                    data={"val_path": f"s3://{BUCKET}/data/val.parquet", **data_fields},
                    run={"storage_path": f"s3://{BUCKET}/runs"})


def two_runs(s3: S3Server, spec, out) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-c", TWO_RUNS, str(spec), str(out), f"s3://{RUN_DIR}/summary.json"],
                       capture_output=True, text=True, cwd=REPO, env=process_env(s3, OMP_NUM_THREADS="1"),
                       timeout=900)  # a hang guard: the two runs take about a minute
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def read_json(fs, path: str) -> dict:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def checkpoint_epochs(fs, run_dir: str) -> dict[int, str]:
    """{epoch: folder} of the checkpoint folders under an S3 run folder."""
    folders = [e.path for e in fs.get_file_info(pafs.FileSelector(run_dir))
               if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_")]
    return {read_json(fs, f"{f}/{checkpoint.PROGRESS}")["epoch"]: f for f in folders}


def test_run_reads_s3_data_writes_its_run_folder_to_s3_and_resumes_from_it(s3, tmp_path):
    fs = s3.filesystem()
    spec = write_spec(tmp_path / "job.yaml", s3_spec(tmp_path, "s3run", shuffle_buffer=0))
    p = two_runs(s3, spec, tmp_path)
    # Each run's last stdout line names its folder on S3.
    assert [line for line in p.stdout.splitlines() if "://" in line][-2:] == [f"s3://{RUN_DIR}"] * 2
    first, second = (json.loads((tmp_path / f"summary_{i}.json").read_text()) for i in (0, 1))
    assert first["status"] == "succeeded" and first["epochs_done"] == 2
    assert first["data"]["train_rows"] == 64 and first["data"]["val_rows"] == 16  # the objects' rows

    # The re-run with one more epoch continued from the checkpoint on S3 (no copy exists elsewhere).
    assert second["status"] == "succeeded"
    assert second["resumes"] == [{"epoch": 2, "step": first["steps_done"]}]
    assert [m["epoch"] for m in second["history"]] == [1, 2, 3]
    assert second["history"][:2] == first["history"]

    # The checkpoints are on S3, whole (every byte matches its manifest), the latest
    # `run.keep_checkpoints` (2) of them, and the summary names the newest by its URI.
    kept = checkpoint_epochs(fs, RUN_DIR)
    assert sorted(kept) == [2, 3]
    assert all(checkpoint.is_complete(fs, folder, deep=True) for folder in kept.values())
    assert second["checkpoint"] == f"s3://{kept[3]}" and second["model"] == f"s3://{RUN_DIR}/model"

    # The exported model on S3 is the trained one: it reproduces the reported validation accuracy.
    local = tmp_path / "downloaded"
    (local / "model").mkdir(parents=True)
    pafs.copy_files(f"{RUN_DIR}/model", str(local / "model"), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    model = load_exported(str(local)).eval()
    val = pq.read_table(f"{BUCKET}/data/val.parquet", filesystem=fs)
    with torch.no_grad():
        guess = model({"x": torch.tensor(data.feature_matrix(val, ["x"], "val"))}).argmax(-1).numpy()
    assert np.mean(guess == val["label"].to_numpy()) == pytest.approx(second["metrics"]["val_accuracy"])
    with fs.open_input_stream(f"{RUN_DIR}/curves.png") as f:
        assert f.read(4) == b"\x89PNG"


def test_a_missing_object_exits_2_before_ray_starts(s3, tmp_path, monkeypatch, capsys, no_ray):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    cases = {"data.path": s3_spec(tmp_path, "gone"),
             "data.val_path": s3_spec(tmp_path, "gone")}
    cases["data.path"]["data"]["path"] = f"s3://{BUCKET}/data/nope.parquet"
    cases["data.val_path"]["data"]["val_path"] = f"s3://{BUCKET}/data/nope_val.parquet"
    for key, raw in cases.items():
        code = cli.main(["run", str(write_spec(tmp_path / "bad.yaml", raw))])
        out, err = capsys.readouterr()
        assert code == 2 and out == "", key
        uri = raw["data"][key.split(".")[1]]
        assert err == f"ftray: error: {key}: {uri!r}: no such file or folder\n", err
