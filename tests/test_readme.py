"""README stays true: the spec reference matches the schema, CI runs README's test command,
and the commands it shows exist."""

from __future__ import annotations

import re

import yaml

from ftray.reference import END, START, spec_reference
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_spec_reference_is_in_sync():
    inside = README.split(START)[1].split(END)[0].lstrip("\n")
    assert inside == spec_reference(), "run `ftray reference` and paste it into README.md"


def test_every_spec_field_is_documented():
    for key in ("scaling.num_workers", "scaling.use_gpu", "run.name", "run.storage_path", "run.seed",
                "model.layers", "model.units", "model.activation", "model.dropout", "train.lr",
                "train.batch_size", "train.epochs", "train.optimizer", "train.l1",
                "train.optimizer.weight_decay", "train.optimizer.momentum", "train.schedule.name",
                "train.grad_clip", "train.grad_accum_steps", "train.precision",
                "train.early_stopping.patience"):
        assert f"`{key}`" in README, key


def _code_blocks(after: str) -> str:
    return README.split(after)[1].split("```bash")[1].split("```")[0]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    commands = [line.strip() for line in _code_blocks("**2. Install the test extra").splitlines() if line.strip()]
    assert commands and any("pytest" in c for c in commands)
    for command in commands:
        for part in command.split(" && "):
            assert part in ci, part


def test_quickstart_command_names_a_real_job():
    block = _code_blocks("**1. Install and run the quickstart")
    jobs = re.findall(r"ftray run (\S+)", block)
    assert jobs and all((REPO / j).is_file() for j in jobs)


def test_cluster_launcher_config_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    config["available_node_types"]["gpu_worker"]["min_wokers"] = 1  # a typo must be caught
    try:
        validate_config(prepare_config(config))
    except Exception as e:  # noqa: BLE001 - Ray raises jsonschema's ValidationError
        assert "min_wokers" in str(e)
    else:
        raise AssertionError("a misspelled key passed Ray's validation")
