"""Hugging Face `datasets` inputs: `save_to_disk` folders (Dataset and DatasetDict) and Hub ids,
checked like files before Ray starts and streamed to the workers from their Arrow files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from ftray import cli, data, hf_datasets
from ftray.spec import JobSpec, SpecError
from tests.conftest import blobs, cli_summary, mlp_spec, write_spec


def dataset_of(table) -> datasets.Dataset:
    return datasets.Dataset(datasets.table.InMemoryTable(table))


def saved_dict(path: Path, splits: dict[str, int], seed: int = 0) -> Path:
    """A DatasetDict of blobs (`x`, `label`) with these splits and row counts, saved to `path`."""
    datasets.DatasetDict({name: dataset_of(blobs(n, seed=seed + i)) for i, (name, n) in enumerate(splits.items())}
                         ).save_to_disk(str(path))
    return path


def spec_over(path, tmp_path, **data_fields) -> JobSpec:
    raw = mlp_spec(path, tmp_path / "runs")
    raw["data"].update(data_fields)
    return JobSpec.model_validate(raw)


def test_saved_dataset_and_dataset_dict_read_like_the_same_rows_in_parquet(tmp_path):
    """A saved Dataset, a DatasetDict's split and the same rows in Parquet give one plan: the same
    rows, classes and features; `val_split` takes validation rows from the same dict."""
    table = blobs(40, seed=3)
    pq.write_table(table, tmp_path / "d.parquet")
    dataset_of(table).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": dataset_of(table), "test": dataset_of(blobs(10, seed=4))}
                         ).save_to_disk(str(tmp_path / "dict"))
    plans = [data.inspect(spec_over(tmp_path / p, tmp_path)) for p in ("d.parquet", "single", "dict")]
    assert [p.train.format for p in plans] == ["parquet", "hf", "hf"]
    for p in plans:
        assert p.train_table.equals(plans[0].train_table) and p.info.classes == [0, 1, 2] and p.info.in_features == 8
    spec = spec_over(tmp_path / "dict", tmp_path, val_split="test")
    plan = data.inspect(spec)
    assert (plan.train.split, plan.val.split) == ("train", "test")
    train, val = data.split_tables(spec, plan)
    assert train.equals(table) and val.equals(blobs(10, seed=4))


@pytest.mark.parametrize("fields, expected", [
    ({"split": "validation"}, "data.split: split 'validation' not in ['test', 'train']"),
    ({"val_split": "dev"}, "data.val_split: split 'dev' not in ['test', 'train']"),
    ({"features": ["pixels"]}, "no column 'pixels' (columns: x, label)"),
    ({"val_split": "train"}, "data.val_split: 'train' is data.split too"),
])
def test_missing_split_or_column_names_the_key_and_what_exists(tmp_path, fields, expected):
    saved_dict(tmp_path / "dict", {"train": 20, "test": 8})
    with pytest.raises(SpecError) as e:
        data.inspect(spec_over(tmp_path / "dict", tmp_path, **fields))
    assert expected in str(e.value)


def test_a_split_of_a_plain_file_is_refused(tmp_path):
    pq.write_table(blobs(20), tmp_path / "d.parquet")
    with pytest.raises(SpecError, match="data.val_split: 'test' names a split of a Hugging Face dataset"):
        data.inspect(spec_over(tmp_path / "d.parquet", tmp_path, val_split="test"))


def test_without_the_datasets_library_a_dataset_folder_says_what_to_install(tmp_path, monkeypatch):
    saved_dict(tmp_path / "dict", {"train": 20})
    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` meets when it is not installed
    with pytest.raises(SpecError, match=r"data.path: .*the `datasets` library is not installed: pip install 'ftray\[hf\]'"):
        data.inspect(spec_over(tmp_path / "dict", tmp_path))


def hub_cache(cache: Path, repo_id: str, source: Path) -> None:
    """Lay out `datasets`' cache as a download of `repo_id` leaves it (`owner___name/config/version/
    hash/name-split.arrow`), from the Arrow files of the saved DatasetDict at `source`."""
    owner, name = repo_id.split("/")
    target = cache / f"{owner}___{name}" / "default" / "0.0.0" / "0123abcd"
    target.mkdir(parents=True)
    splits = json.loads((source / "dataset_dict.json").read_text())["splits"]
    info = json.loads((source / splits[0] / "dataset_info.json").read_text())
    info["splits"] = {}
    for split in splits:
        shutil.copy(next((source / split).glob("*.arrow")), target / f"{name}-{split}.arrow")
        rows = datasets.load_from_disk(str(source / split)).num_rows
        info["splits"][split] = {"name": split, "num_examples": rows, "dataset_name": name}
    info.update(builder_name=name, dataset_name=name, config_name="default", version={"version_str": "0.0.0"})
    (target / "dataset_info.json").write_text(json.dumps(info))


def validate(tmp_path: Path, env: dict, *cases: tuple[str, dict]) -> subprocess.CompletedProcess:
    """`ftray validate` of one mlp spec per (data.path, more data fields) case, in one fresh process
    with `env` added."""
    paths = []
    for i, (data_path, fields) in enumerate(cases):
        raw = mlp_spec(Path(data_path), tmp_path / "runs")
        raw["data"].update({"path": data_path, **fields})
        paths.append(str(write_spec(tmp_path / f"job{i}.yaml", raw)))
    return subprocess.run([sys.executable, "-m", "ftray", "validate", *paths], cwd=tmp_path,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_a_hub_id_loads_through_load_dataset_or_exits_2(tmp_path):
    """A Hub id goes through `datasets.load_dataset`, the real Hub path: here (no Hub, offline
    mode) it loads from the local `datasets` cache, its splits checked like a saved folder's; an id
    that is neither cached nor reachable exits 2 naming the key and the id."""
    cache = tmp_path / "cache"
    hub_cache(cache, "someone/blobs", saved_dict(tmp_path / "dict", {"train": 30, "test": 10}))
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf")}
    proc = validate(tmp_path, env, ("someone/blobs", {"val_split": "test"}), ("someone/blobs", {"val_split": "dev"}),
                    ("nobody/nothing", {}))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "job0.yaml: ok (" in proc.stdout, (proc.stdout, proc.stderr[-3000:])
    assert "job1.yaml: data.val_split: split 'dev' not in ['test', 'train'] (data.path: someone/blobs)" in proc.stderr
    assert "job2.yaml: data.path: 'nobody/nothing' is no local file or folder, and loading it as a Hugging " \
           "Face Hub dataset failed" in proc.stderr


def test_arrow_files_stream_batch_by_batch(tmp_path):
    """The workers' reader yields a split's rows from its Arrow files one record batch at a time,
    in order, only the columns asked for."""
    table = blobs(5000)
    dataset_of(table).save_to_disk(str(tmp_path / "s"), max_shard_size="100KB")  # 3 files of 2 batches
    ds = datasets.load_from_disk(str(tmp_path / "s"))
    files = hf_datasets.arrow_files(ds)
    assert len(files) > 1
    parts = [b for f in files for b in hf_datasets.file_batches(f, ["label"])]
    assert len(parts) > len(files) and all(p.column_names == ["label"] for p in parts)
    assert np.concatenate([p.column("label").to_numpy() for p in parts]).tolist() == table.column("label").to_pylist()


def test_saved_datasets_train_end_to_end_streamed(ray_session, tmp_path, monkeypatch, capsys):
    """A DatasetDict's `train` split against a saved single Dataset as `val_path`, through `ftray
    run` with both streamed from their Arrow files (limits lowered, the rule is the same): every
    row is seen each epoch and the model learns the blobs."""
    monkeypatch.setattr(data, "TRANSFORM_HERE_BYTES", 0)
    monkeypatch.setattr(data, "MATERIALIZE_BYTES", 0)
    saved_dict(tmp_path / "dict", {"train": 96})
    dataset_of(blobs(24, seed=0)).save_to_disk(str(tmp_path / "val"), max_shard_size="1KB")
    raw = mlp_spec(tmp_path / "dict", tmp_path / "runs", "hf", data={"val_path": str(tmp_path / "val")},
                   train={"epochs": 3, "batch_size": 16, "lr": 0.05})
    summary = cli_summary(capsys, "run", str(write_spec(tmp_path / "hf.yaml", raw)))
    assert summary["status"] == "succeeded" and summary["data"]["train_rows"] == 96
    assert summary["data"]["val_rows"] == 24
    assert summary["steps_done"] == 3 * 96 // 16
    assert summary["metrics"]["val_accuracy"] >= 0.9


@pytest.mark.parametrize("fields, expected", [
    ({"split": "validation"}, "data.split: split 'validation' not in ['train']"),
    ({"features": ["pixels"]}, "no column 'pixels'"),
])
def test_bad_dataset_folders_exit_2_before_ray(tmp_path, capsys, no_ray, fields, expected):
    saved_dict(tmp_path / "dict", {"train": 20})
    raw = mlp_spec(tmp_path / "dict", tmp_path / "runs")
    raw["data"].update(fields)
    path = str(write_spec(tmp_path / "job.yaml", raw))
    for command in ("validate", "run"):
        assert cli.main([command, path]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ftray: error: ") and expected in err and "Traceback" not in err, err

