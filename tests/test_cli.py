"""`ftray validate`: every spec given is reported (ok or its error, one line each), exit 2 if any
failed; it checks what `run` and `sweep` check before Ray starts (searched keys and values, the
run folder), without starting Ray."""

from __future__ import annotations

import pytest

from ftray import cli
from tests.conftest import mlp_spec, write_spec


def test_validate_reports_every_spec_and_exits_2_if_one_failed(tmp_path, blobs_parquet, capsys, no_ray):
    good = write_spec(tmp_path / "good.yaml", mlp_spec(blobs_parquet, tmp_path / "runs", "a"))
    bad = write_spec(tmp_path / "bad.yaml", {**mlp_spec(blobs_parquet, tmp_path / "runs", "b"),
                                             "data": {"path": str(blobs_parquet), "features": ["x"],
                                                      "label": "nope"}})
    good2 = write_spec(tmp_path / "good2.yaml", mlp_spec(blobs_parquet, tmp_path / "runs", "c"))
    assert cli.main(["validate", str(good), str(bad), str(good2)]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{good}: ok (mlp / full, run a)", f"{good2}: ok (mlp / full, run c)"]
    (line,) = err.splitlines()  # one line for the bad spec, naming it and the problem
    assert line.startswith(f"ftray: error: {bad}: ") and "no column 'nope'" in line and "Traceback" not in err


@pytest.mark.parametrize("spec_only", [False, True])
def test_validate_refuses_an_unknown_searched_key(tmp_path, blobs_parquet, capsys, no_ray, spec_only):
    raw = mlp_spec(blobs_parquet, tmp_path / "runs")
    raw["tune"] = {"space": {"train.lr": {"choice": [0.01]}, "model.unitz": {"choice": [8, 16]}}}
    path = write_spec(tmp_path / "sweep.yaml", raw)
    assert cli.main(["validate", *(["--spec-only"] if spec_only else []), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: tune.space.model.unitz = 8: unknown key" in err, err


def test_validate_refuses_a_searched_value_the_key_does_not_take(tmp_path, blobs_parquet, capsys, no_ray):
    raw = mlp_spec(blobs_parquet, tmp_path / "runs")
    raw["tune"] = {"space": {"model.dropout": {"uniform": [0.5, 1.5]}}}
    assert cli.main(["validate", str(write_spec(tmp_path / "sweep.yaml", raw))]) == 2
    assert "tune.space.model.dropout = 1.5: Input should be less than 1" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_validate_refuses_a_run_folder_that_cannot_be_created(tmp_path, blobs_parquet, capsys, no_ray, where):
    (tmp_path / "f").write_text("not a folder")
    storage = tmp_path / "f" if where == "file" else tmp_path / "f" / "runs"
    path = write_spec(tmp_path / "job.yaml", mlp_spec(blobs_parquet, storage))
    for command in ("validate", "run"):
        assert cli.main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ftray: error: ") and "run.storage_path: " in err and str(tmp_path / "f") in err, err


def test_a_bad_flag_prints_the_subcommands_usage(capsys):
    for argv, prog, extra in ((["run", "job.yaml", "--epochs", "3"], "ftray run", "--epochs 3"),
                              (["rl", "collect", "runs/x", "--out", "d.parquet", "--bogus"], "ftray rl collect",
                               "--bogus")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"usage: {prog} [-h]"), err
        assert err.endswith(f"{prog}: error: unrecognized arguments: {extra}\n"), err


def test_run_help_explains_the_spec_resuming_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "SPEC, a YAML file" in out and "the same run.name goes on from its latest checkpoint" in out
    assert "Exit status: 0 done; 2 bad input" in out and "1 the run failed" in out


def test_an_unknown_key_gets_a_did_you_mean(tmp_path, blobs_parquet, capsys, no_ray):
    raw = mlp_spec(blobs_parquet, tmp_path / "runs")
    raw["model"]["unitz"] = 8
    path = write_spec(tmp_path / "job.yaml", raw)
    assert cli.main(["validate", "--spec-only", str(path), "--set", "train.optimizer={name: sgd, momentun: 0.9}"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: model.unitz: unknown key; did you mean 'units'?" in err, err
    assert "train.optimizer.momentun: unknown key; did you mean 'momentum'?" in err, err
