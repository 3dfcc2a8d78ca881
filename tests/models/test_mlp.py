"""The mlp builder: structure from the spec, export/load round trip, checked pretrained starts."""

from __future__ import annotations

import pytest
import torch

from ftray.models import ModelInfo, build_model, check_model_source, load_exported
from ftray.spec import JobSpec, SpecError
from tests.conftest import mlp_spec

INFO = ModelInfo(task="classification", in_features=6, classes=[0, 1, 2])


def make(tmp_path, model=None, method=None):
    raw = mlp_spec(tmp_path / "d.parquet", tmp_path)
    raw["model"] = {"name": "mlp", "layers": 2, "units": 12, "activation": "tanh", "dropout": 0.2, **(model or {})}
    if method:
        raw["method"] = method
    return JobSpec.model_validate(raw)


def test_structure_follows_the_spec(tmp_path):
    model = build_model(make(tmp_path, {"layers": 3, "units": 7, "activation": "silu"}), INFO)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 7), (7, 7), (7, 7), (7, 3)]
    assert sum(isinstance(m, torch.nn.SiLU) for m in model.modules()) == 3
    assert all(m.p == 0.2 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_export_and_load_give_the_same_outputs(tmp_path):
    model = build_model(make(tmp_path), INFO).eval()
    model.export(tmp_path / "run" / "model")
    again = load_exported(str(tmp_path / "run")).eval()
    x = {"x": torch.randn(5, 6)}
    torch.testing.assert_close(model(x), again(x))
    assert again.info.classes == [0, 1, 2]


def test_init_from_loads_backbone_and_checks_shapes(tmp_path):
    base = build_model(make(tmp_path), INFO)
    base.export(tmp_path / "pre" / "model")
    other = ModelInfo(task="classification", in_features=6, classes=["a", "b"])
    spec = make(tmp_path, {"init_from": str(tmp_path / "pre")}, {"name": "transfer"})
    check_model_source(spec, other)
    model = build_model(spec, other)
    torch.testing.assert_close(model.backbone[0][0].weight, base.backbone[0][0].weight)
    assert model.classifier.out_features == 2

    with pytest.raises(SpecError, match=r"shape mismatch.*backbone.0.0.weight"):
        check_model_source(make(tmp_path, {"init_from": str(tmp_path / "pre"), "units": 13},
                                {"name": "transfer"}), other)
    with pytest.raises(SpecError, match=r"missing \['backbone.2.0.bias'"):
        check_model_source(make(tmp_path, {"init_from": str(tmp_path / "pre"), "layers": 3},
                                {"name": "transfer"}), other)
    with pytest.raises(SpecError, match="the head differs: use method.name: transfer"):
        check_model_source(make(tmp_path, {"init_from": str(tmp_path / "pre")}), other)
    with pytest.raises(SpecError, match="holds no exported ftray model"):
        check_model_source(make(tmp_path, {"init_from": str(tmp_path)}), other)
