"""The job spec: defaults, overrides through the same validation, and every bad-input case."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftray.spec import JobSpec, SpecError, load_spec
from tests.conftest import write_spec

BASE = """
model: {name: mlp, layers: 2, units: 32, activation: gelu, dropout: 0.1}
data: {path: d.parquet, features: [x]}
train: {epochs: 2, batch_size: 8, lr: 0.01}
run: {name: demo}
"""


def spec_file(tmp_path, text=BASE):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_defaults_and_fixed_names(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    assert spec.scaling.num_workers == 1 and spec.scaling.use_gpu is False
    assert spec.run.name == "demo" and spec.run.seed == 0
    assert spec.run.storage_path == str(Path.cwd() / "runs")  # pinned: Ray workers have another cwd
    assert spec.train.optimizer.name == "adamw" and spec.method.name == "full"
    assert spec.model.activation == "gelu" and spec.model.dropout == 0.1


@pytest.mark.parametrize("override, check", [
    ("train.lr=3e-4", lambda s: s.train.lr == 3e-4),
    ("model.layers=5", lambda s: s.model.layers == 5),
    ("train.optimizer={name: sgd, momentum: 0.9, nesterov: true}",
     lambda s: s.train.optimizer.name == "sgd" and s.train.optimizer.nesterov),
    ("train.optimizer.name=rmsprop", lambda s: s.train.optimizer.name == "rmsprop"),
    ("train.schedule.name=plateau", lambda s: s.train.schedule.name == "plateau"),
    ("train.l1=0.001", lambda s: s.train.l1 == 0.001),
    ("scaling.num_workers=2", lambda s: s.scaling.num_workers == 2),
    ("method.name=transfer", lambda s: s.method.unfreeze_last == 0),
    ("train.early_stopping.patience=3", lambda s: s.train.early_stopping.patience == 3),
])
def test_overrides_apply(tmp_path, override, check):
    assert check(load_spec(spec_file(tmp_path), [override]))


@pytest.mark.parametrize("text, expected", [
    ("model: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("", "top level must be a mapping of sections, not empty"),
    (BASE + "extra: 1\n", "extra: unknown key"),
    (BASE.replace("units: 32", "units: 32, unit: 3"), "model.unit: unknown key"),
    (BASE.replace("epochs: 2", "epochs: two"), "train.epochs: Input should be a valid integer"),
    (BASE.replace("lr: 0.01", "lr: -0.01"), "train.lr: Input should be greater than 0"),
    (BASE.replace("dropout: 0.1", "dropout: 1.0"), "model.dropout: Input should be less than 1"),
    (BASE + "scaling: {num_workers: 0}\n", "scaling.num_workers: Input should be greater than or equal to 1"),
    (BASE + "scaling: {num_workers: 100000}\n", "scaling.num_workers: Input should be less than or equal"),
    (BASE.replace("name: mlp,", "name: cnn,"), "model: unknown name 'cnn'"),
    (BASE.replace("activation: gelu", "activation: swish"), "model.activation"),
    (BASE + "method: {name: transfer, unfreeze_last: -1}\n", "method.unfreeze_last"),
    (BASE.replace("run: {name: demo}", "run: {name: ../escape}"), "run.name: String should match"),
    (BASE.replace("batch_size: 8", "batch_size: 9") + "scaling: {num_workers: 2}\n",
     "train.batch_size: 9 is not divisible"),
    (BASE + "train: {}\n", "duplicate key 'train'"),
    (BASE + "x: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
    (BASE + "a: &a [1, 2]\nb: *a\n", "aliases"),
    (BASE.replace("features: [x]", "features: []"), "data.features"),
    # a field named like a union tag (`method.lora`, tag `lora`) keeps its name in the message
    (BASE.replace("model: {name: mlp, layers: 2, units: 32, activation: gelu, dropout: 0.1}",
                  "model: {name: hf, path: x}").replace("features: [x]", "text: t")
     + "method: {name: attention, lora: maybe}\n", "method.lora: Input should be a valid boolean"),
    (BASE + "method: {name: transfer, unfreeze_last: 3}\n", "method.unfreeze_last: 3 blocks asked, the mlp has 2"),
    (BASE.replace("lr: 0.01", "lr: 0.01, early_stopping: {patience: 2, metric: val_acc}"),
     "train.early_stopping.metric: 'val_acc' is not reported"),
    (BASE + "train: {precision: fp16}\n".replace("train", "scaling") , "scaling.precision: unknown key"),
])
def test_bad_specs_name_the_key(tmp_path, text, expected):
    with pytest.raises(SpecError) as e:
        load_spec(spec_file(tmp_path, text))
    assert expected in str(e.value)
    assert str(tmp_path / "job.yaml") in str(e.value)


def test_fp16_needs_gpu(tmp_path):
    with pytest.raises(SpecError, match="fp16 needs scaling.use_gpu"):
        load_spec(spec_file(tmp_path), ["train.precision=fp16"])


def test_bad_override_goes_through_validation(tmp_path):
    with pytest.raises(SpecError, match="train.lr: Input should be greater than 0"):
        load_spec(spec_file(tmp_path), ["train.lr=-1"])
    with pytest.raises(SpecError, match="expected key.path=value"):
        load_spec(spec_file(tmp_path), ["train.lr"])
    with pytest.raises(SpecError, match="train.lr is not a mapping"):
        load_spec(spec_file(tmp_path), ["train.lr.x=1"])


def test_missing_and_oversized_files(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20))
    with pytest.raises(SpecError, match="larger than"):
        load_spec(big)


def test_python_tags_do_not_run(tmp_path):
    marker = tmp_path / "pwned"
    text = BASE + f"x: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(SpecError):
        load_spec(spec_file(tmp_path, text))
    assert not marker.exists()


def test_round_trip_of_resolved_spec(tmp_path):
    spec = load_spec(spec_file(tmp_path), ["train.optimizer.name=sgd", "train.optimizer.momentum=0.9"])
    again = JobSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec
    p = write_spec(tmp_path / "resolved.yaml", spec.model_dump(mode="json"))
    assert load_spec(p) == spec


def test_local_paths_are_pinned_and_the_rest_left_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local_model").mkdir()
    text = """
model: {name: hf, path: MODEL}
data: {path: s3://bucket/train.parquet, val_path: val.jsonl, text: t}
run: {name: demo, storage_path: gs://bucket/runs}
"""
    for given, expected in [("local_model", str(tmp_path / "local_model")), ("./x", str(tmp_path / "x")),
                            ("org/model-id", "org/model-id"), ("package:pkg/model", "package:pkg/model")]:
        spec = load_spec(spec_file(tmp_path, text.replace("MODEL", given)))
        assert spec.model.path == expected
        assert spec.data.path == "s3://bucket/train.parquet" and spec.data.val_path == str(tmp_path / "val.jsonl")
        assert spec.run.storage_path == "gs://bucket/runs"


def test_a_relative_storage_path_inside_a_ray_job_is_warned_about(tmp_path, monkeypatch, capsys):
    """Under plain `ray job submit` the driver runs in the job's temporary working_dir copy."""
    monkeypatch.chdir(tmp_path)
    spec_file(tmp_path)
    load_spec(tmp_path / "job.yaml", ["run.storage_path=out/runs"])
    assert capsys.readouterr().err == ""  # not in a job: relative is fine
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    load_spec(tmp_path / "job.yaml", [f"run.storage_path={tmp_path / 'abs'}"])
    assert capsys.readouterr().err == ""  # absolute: nothing to say
    spec = load_spec(tmp_path / "job.yaml", ["run.storage_path=out/runs"])
    err = capsys.readouterr().err
    assert spec.run.storage_path == str(tmp_path / "out" / "runs")
    assert err.startswith("ftray: warning: run.storage_path is relative; inside this Ray job it resolves to "
                          f"{tmp_path / 'out' / 'runs'},"), err
