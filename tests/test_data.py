"""Data inspection before Ray starts, and the Ray Data pipelines the workers stream from."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from ftray import data
from ftray.spec import JobSpec, SpecError
from tests.conftest import blobs, mlp_spec


def spec_for(path, tmp_path, **data_fields):
    raw = mlp_spec(path, tmp_path / "runs")
    raw["data"].update({"val_fraction": 0.5, **data_fields})
    return JobSpec.model_validate(raw)


def write_formats(tmp_path, table: pa.Table):
    """The same rows as Parquet, JSONL and CSV (CSV with one scalar column per feature)."""
    pq.write_table(table, tmp_path / "d.parquet")
    rows = table.to_pylist()
    (tmp_path / "d.jsonl").write_text("".join(
        '{"x": [%s], "label": %d}\n' % (", ".join(repr(float(v)) for v in r["x"]), r["label"]) for r in rows))
    x = np.array([r["x"] for r in rows])
    flat = pa.table({**{f"f{i}": x[:, i] for i in range(x.shape[1])}, "label": table.column("label")})
    pacsv.write_csv(flat, tmp_path / "d.csv")
    return [f"f{i}" for i in range(x.shape[1])]


def test_parquet_jsonl_csv_and_file_uri_agree(tmp_path):
    table = blobs(30, classes=3, width=4)
    csv_features = write_formats(tmp_path, table)
    plans = [data.inspect(spec_for(tmp_path / "d.parquet", tmp_path)),
             data.inspect(spec_for(tmp_path / "d.jsonl", tmp_path)),
             data.inspect(spec_for(f"file://{tmp_path}/d.parquet", tmp_path)),
             data.inspect(spec_for(tmp_path / "d.csv", tmp_path, features=csv_features))]
    assert [p.train.format for p in plans] == ["parquet", "jsonl", "parquet", "csv"]
    assert all(p.info.in_features == 4 and p.info.classes == [0, 1, 2] and p.train_table.num_rows == 30 for p in plans)
    matrices = [data.feature_matrix(p.train_table, f, "t") for p, f in
                zip(plans, [["x"], ["x"], ["x"], csv_features])]
    for m in matrices[1:]:
        np.testing.assert_allclose(m, matrices[0], rtol=1e-6)


def test_split_is_seeded_disjoint_and_complete():
    table = pa.table({"i": np.arange(100)})
    a_train, a_val = data.split_table(table, 0.2, seed=3)
    b_train, b_val = data.split_table(table, 0.2, seed=3)
    _, c_val = data.split_table(table, 0.2, seed=4)
    assert a_val.equals(b_val) and a_train.equals(b_train)
    assert a_val.num_rows == 20 and a_train.num_rows == 80
    assert set(a_val["i"].to_pylist()) | set(a_train["i"].to_pylist()) == set(range(100))
    assert a_val["i"].to_pylist() != c_val["i"].to_pylist()


def test_labels_differing_only_by_case_or_spaces_are_warned_about(tmp_path, capsys):
    p = tmp_path / "d.csv"
    p.write_text("f0,label\n1,dog\n2,cat\n3,Dog \n4,cat\n5,dog\n6,Dog \n")
    plan = data.inspect(spec_for(p, tmp_path, features=["f0"]))
    assert plan.info.classes == ["Dog ", "cat", "dog"]  # still separate classes: the user decides
    err = capsys.readouterr().err
    assert err.count("ftray: warning:") == 1, err
    assert f"data.path: {p}: row 2: label 'Dog ' differs from 'dog' (row 0) only by case or surrounding spaces" in err


def test_string_labels_and_explicit_classes(tmp_path):
    p = tmp_path / "s.parquet"
    pq.write_table(pa.table({"x": [[1.0], [2.0], [3.0]], "label": ["b", "a", "c"]}), p)
    assert data.inspect(spec_for(p, tmp_path)).info.classes == ["a", "b", "c"]
    plan = data.inspect(spec_for(p, tmp_path, classes=["c", "b", "a"]))
    assert plan.class_index == {"c": 0, "b": 1, "a": 2}


@pytest.mark.parametrize("table, fields, expected", [
    (pa.table({"x": [[1.0], [2.0]], "label": [0, 5]}), {"classes": [0, 1]}, "row 1: label 5 is not one of"),
    (pa.table({"x": [[1.0], [2.0]], "label": [0, -1]}), {}, "row 1: label -1 is negative"),
    (pa.table({"x": [[1.0], [float("nan")]], "label": [0, 1]}), {}, "row 1: a feature is NaN or infinite"),
    (pa.table({"x": [[1.0], [float("inf")]], "label": [0, 1]}), {}, "row 1: a feature is NaN or infinite"),
    (pa.table({"x": [[1.0], [2.0, 3.0]], "label": [0, 1]}), {}, "row 1: feature 'x' has 2 values"),
    (pa.table({"x": [[1.0], None], "label": [0, 1]}), {}, "row 1: feature 'x' has no value"),
    (pa.table({"x": [[1.0], [2.0]], "label": [0, None]}), {}, "row 1: label 'label' has no value"),
    (pa.table({"x": [[1.0], [2.0]], "label": [0.5, 1.5]}), {}, "classification needs integer or string"),
    (pa.table({"x": ["a", "b"], "label": [0, 1]}), {}, "row 0: feature 'x' is 'a', not a number"),
    (pa.table({"x": [[1.0], [2.0]], "label": [0, 0]}), {}, "at least 2 classes"),
    (pa.table({"x": [[1.0], [2.0]], "y": [0, 1]}), {}, "no column 'label'"),
    (pa.table({"x": pa.array([], pa.list_(pa.float32())), "label": pa.array([], pa.int64())}), {}, "no rows"),
    (pa.table({"x": [[1.0], [2.0]], "label": [0, 1]}), {"val_fraction": 0.1}, "leaves no validation rows"),
])
def test_bad_data_names_the_row(tmp_path, table, fields, expected):
    p = tmp_path / "bad.parquet"
    pq.write_table(table, p)
    with pytest.raises(SpecError) as e:
        data.inspect(spec_for(p, tmp_path, **fields))
    assert expected in str(e.value)
    assert "bad.parquet" in str(e.value) or "data." in str(e.value)


def test_missing_truncated_and_unknown_files(tmp_path):
    with pytest.raises(SpecError, match="data.path: .*no such file"):
        data.inspect(spec_for(tmp_path / "nope.parquet", tmp_path))
    good = tmp_path / "good.parquet"
    pq.write_table(blobs(20), good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SpecError, match="cannot read as parquet"):
        data.inspect(spec_for(cut, tmp_path))
    odd = tmp_path / "d.txt"
    odd.write_text("hello")
    with pytest.raises(SpecError, match="set data.format"):
        data.inspect(spec_for(odd, tmp_path))
    with pytest.raises(SpecError, match="data.val_path: .*no such file"):
        data.inspect(spec_for(good, tmp_path, val_path=str(tmp_path / "val.parquet")))


def test_validation_file_must_match_training_width(tmp_path):
    pq.write_table(blobs(20, width=4), tmp_path / "train.parquet")
    pq.write_table(blobs(20, width=5), tmp_path / "val.parquet")
    with pytest.raises(SpecError, match="5 feature values per row, training data has 4"):
        data.inspect(spec_for(tmp_path / "train.parquet", tmp_path, val_path=str(tmp_path / "val.parquet")))


@pytest.mark.parametrize("fmt, here", [("parquet", True), ("jsonl", True), ("parquet", False), ("jsonl", False)])
def test_ray_pipelines_yield_tensors(ray_session, tmp_path, monkeypatch, fmt, here):
    """Small data is transformed in the driver, larger data by Ray Data tasks: the same tensors
    (JSONL read in byte ranges, here ~200 bytes each so that lines straddle them)."""
    if not here:
        monkeypatch.setattr(data, "TRANSFORM_HERE_BYTES", 0)
        monkeypatch.setattr(data, "JSONL_RANGE_BYTES", 200)
    for name, table in (("train", blobs(40, classes=2, width=3, label_offset=5)),
                        ("val", blobs(10, classes=2, width=3, label_offset=5, seed=1))):
        if fmt == "parquet":
            pq.write_table(table, tmp_path / f"{name}.parquet")
        else:
            (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    spec = spec_for(tmp_path / f"train.{fmt}", tmp_path, val_path=str(tmp_path / f"val.{fmt}"), classes=[5, 6])
    plan = data.inspect(spec)
    datasets, rows = data.ray_datasets(spec, plan)
    assert rows == {"train": 40, "val": 10}
    batch = next(iter(datasets["val"].iter_torch_batches(batch_size=10)))
    assert tuple(batch["x"].shape) == (10, 3) and sorted(set(batch["y"].tolist())) == [0, 1]
    val = blobs(10, classes=2, width=3, label_offset=5, seed=1)
    assert np.allclose(np.sort(batch["x"].numpy(), axis=0),
                       np.sort(np.array(val.column("x").to_pylist(), dtype=np.float32), axis=0))


# ------------------------------------------------------------------ instruction tuning (causal LM)
def sft_spec(tmp_path, tok_dir, **data_fields):
    return JobSpec.model_validate({
        "model": {"name": "hf", "path": str(tok_dir), "max_length": 12},
        "data": {"path": str(tmp_path / "sft.jsonl"), "task": "causal_lm", "prompt": "prompt",
                 "response": "response", "label": None, **data_fields},
        "run": {"name": "t", "storage_path": str(tmp_path)}})


def test_prompt_tokens_carry_no_loss(tmp_path, tiny_gpt):
    from ftray.models.hf import load_tokenizer
    tok = load_tokenizer(str(tiny_gpt))
    ids, labels = data.encode(tok, sft_spec(tmp_path, tiny_gpt), "add two and two", "four")
    n_prompt = len(tok("add two and two")["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and len(ids) > n_prompt


def test_chat_template_is_used_when_the_tokenizer_has_one(tmp_path, tiny_gpt):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_gpt)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    ids, labels = data.encode(tok, sft_spec(tmp_path, tiny_gpt, truncation="none"), "hi", "yes")
    n_prompt = sum(1 for label in labels if label == -100)
    assert tok.decode(ids[:n_prompt]).replace(" ", "") == "user:hiassistant:"
    assert tok.decode(ids[n_prompt:]).strip() == "yes"


@pytest.mark.parametrize("truncation, expected", [
    ("none", "row 1: prompt + response are"),
    ("right", "row 1: the prompt alone is"),
])
def test_too_long_prompts_stop_before_ray(tmp_path, tiny_gpt, truncation, expected):
    rows = [{"prompt": "short", "response": "ok"}, {"prompt": "word " * 30, "response": "ok"}]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = sft_spec(tmp_path, tiny_gpt, truncation=truncation, val_fraction=0.5)
    plan = data.inspect(spec)
    with pytest.raises(SpecError, match=re.escape(expected)):
        data.check_lengths(spec, plan, str(tiny_gpt))
    left = sft_spec(tmp_path, tiny_gpt, truncation="left", val_fraction=0.5)
    data.check_lengths(left, data.inspect(left), str(tiny_gpt))  # keeps the response, cuts the prompt


def text_spec(tmp_path, tok_dir, **data_fields):
    """A causal-LM spec over plain text (`text` column of lm.jsonl), 12 tokens per example."""
    return JobSpec.model_validate({
        "model": {"name": "hf", "path": str(tok_dir), "max_length": 12},
        "data": {"path": str(tmp_path / "lm.jsonl"), "task": "causal_lm", "text": "text", "label": None,
                 **data_fields},
        "run": {"name": "t", "storage_path": str(tmp_path)}})


def test_plain_text_that_truncation_always_fits_is_not_tokenized_before_ray(tmp_path, tiny_gpt):
    """Right/left truncation always fits plain text: the check must not pay for tokenizing it (a
    tokenizer that does not exist is never loaded), but `none` still tokenizes and names the row."""
    rows = [{"text": "word " * 40}, {"text": "short"}]
    (tmp_path / "lm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for truncation in ("right", "left"):
        spec = text_spec(tmp_path, tiny_gpt, truncation=truncation, val_fraction=0.5)
        data.check_lengths(spec, data.inspect(spec), str(tmp_path / "no-such-tokenizer"))
    spec = text_spec(tmp_path, tiny_gpt, truncation="none", val_fraction=0.5)
    with pytest.raises(SpecError, match="row 0: .* tokens, model.max_length is 12"):
        data.check_lengths(spec, data.inspect(spec), str(tiny_gpt))


def test_batch_tokenized_text_rows_equal_each_example_encoded_alone(tmp_path, tiny_gpt):
    """TokenizedRows encodes plain text a batch at a time: the rows must be `encode`'s, truncation
    included."""
    from ftray.models.hf import load_tokenizer
    texts = ["word " * 30, "short one", "left cut " * 9]
    tok = load_tokenizer(str(tiny_gpt))
    for truncation in ("right", "left"):
        spec = text_spec(tmp_path, tiny_gpt, truncation=truncation)
        out = data.TokenizedRows(spec, {}, str(tiny_gpt))(pa.Table.from_pylist([{"text": t} for t in texts]))
        for row, text in zip(out["input_ids"], texts):
            ids, _ = data.encode(tok, spec, text)
            assert row[:len(ids)].tolist() == ids and (row[len(ids):] == tok.pad_token_id).all()


def test_packing_fills_rows(tmp_path, tiny_gpt):
    """Several whole examples per row (tests/test_packing.py checks that none is split), the
    same scored labels, and no two rows whose examples would fit in one (first fit)."""
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(20)]
    batch = pa.Table.from_pylist(rows)
    packed = data.TokenizedRows(sft_spec(tmp_path, tiny_gpt, packing=True), {}, str(tiny_gpt))(batch)
    plain = data.TokenizedRows(sft_spec(tmp_path, tiny_gpt), {}, str(tiny_gpt))(batch)
    assert len(packed["input_ids"]) < len(plain["input_ids"]) == 20
    assert (packed["labels"] != -100).sum() == (plain["labels"] != -100).sum()
    used = (packed["input_ids"] != AutoTokenizer.from_pretrained(tiny_gpt).pad_token_id).sum(1)
    limit = packed["input_ids"].shape[1]
    assert all(a + b > limit for i, a in enumerate(used) for b in used[i + 1:])  # no two rows would fit in one


def test_packed_rows_lose_nothing_without_an_attention_mask(tmp_path, tiny_gpt):
    """Packed rows carry no attention mask (the model reads example boundaries from their
    position ids); the padding at their ends must not change the loss a mask would give."""
    import torch
    from transformers import AutoModelForCausalLM
    from ftray.methods.base import task_loss
    rows = pa.Table.from_pylist([{"prompt": f"q{i}", "response": f"a{i}"} for i in range(20)])
    packed = data.TokenizedRows(sft_spec(tmp_path, tiny_gpt, packing=True), {}, str(tiny_gpt))(rows)
    assert "attention_mask" not in packed
    batch = {k: torch.from_numpy(v) for k, v in packed.items()}
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt).eval()
    real = (batch["input_ids"] != AutoTokenizer.from_pretrained(tiny_gpt).pad_token_id).long()
    with torch.no_grad():
        unmasked = task_loss("causal_lm", model(input_ids=batch["input_ids"]).logits, batch)
        masked = task_loss("causal_lm", model(input_ids=batch["input_ids"], attention_mask=real).logits, batch)
    assert torch.allclose(unmasked, masked, atol=1e-5)


# ------------------------------------------------------------------ materialized or streamed inputs
def write_train_val(tmp_path, val_seed: int = 1):
    pq.write_table(blobs(64, seed=1), tmp_path / "train.parquet")
    pq.write_table(blobs(16, seed=val_seed), tmp_path / "val.parquet")


def rows_of(dataset) -> np.ndarray:
    """One pass over a Ray Dataset (an epoch), its feature rows in a fixed order."""
    x = np.concatenate([b["x"].numpy() for b in dataset.iter_torch_batches(batch_size=8)])
    return x[np.lexsort(x.T)]


@pytest.mark.parametrize("streamed", [pytest.param(False, marks=pytest.mark.slow), True])  # False: the contrast, ~30 s
def test_large_inputs_stream_and_are_read_again_each_epoch(ray_session, tmp_path, monkeypatch, streamed):
    """Over `MATERIALIZE_BYTES` (1 GiB; lowered here, the rule is the same), the Datasets stay
    lazy: every pass reads the files again (a file changed between two passes shows up in the
    second). Up to it, the transformed blocks sit in the object store and a pass reads no file."""
    monkeypatch.setattr(data, "TRANSFORM_HERE_BYTES", 0)  # past the in-driver shortcut (64 MiB)
    if streamed:
        monkeypatch.setattr(data, "MATERIALIZE_BYTES", 0)
    write_train_val(tmp_path)
    spec = spec_for(tmp_path / "train.parquet", tmp_path, val_path=str(tmp_path / "val.parquet"))
    plan = data.inspect(spec)
    # Streamed, the driver holds only the checked sample (SAMPLE_ROWS, more than these files have).
    assert plan.streamed == streamed and plan.row_counts == [64, 16]
    datasets, rows = data.ray_datasets(spec, plan)
    assert rows == {"train": 64, "val": 16}
    from ray.data.dataset import MaterializedDataset
    assert all(isinstance(ds, MaterializedDataset) != streamed for ds in datasets.values())
    first = rows_of(datasets["val"])
    np.testing.assert_allclose(first, rows_of(datasets["val"]))  # two passes, one file: same rows
    write_train_val(tmp_path, val_seed=7)  # the same shape, other values
    second = rows_of(datasets["val"])
    new = np.array(blobs(16, seed=7).column("x").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(second, new[np.lexsort(new.T)] if streamed else first)


@pytest.mark.slow  # streaming itself stays in the default run (test_large_inputs_stream_and_are_read_again_each_epoch)
def test_streamed_inputs_train_like_materialized_ones(ray_session, tmp_path, monkeypatch, capsys):
    """End to end, the same seeded run through both paths: the same weights (full-batch SGD, so
    the order rows stream in does not matter)."""
    from ftray.models import load_exported
    from tests.conftest import cli_summary, write_spec
    write_train_val(tmp_path)
    monkeypatch.setattr(data, "TRANSFORM_HERE_BYTES", 0)
    kinds = {}
    ray_datasets = data.ray_datasets

    def watched(spec, plan):  # what the run's driver built: lazy (streamed) or materialized Datasets
        datasets, rows = ray_datasets(spec, plan)
        from ray.data.dataset import MaterializedDataset
        kinds[spec.run.name] = {isinstance(ds, MaterializedDataset) for ds in datasets.values()}
        return datasets, rows
    monkeypatch.setattr(data, "ray_datasets", watched)

    def run(name):
        raw = mlp_spec(tmp_path / "train.parquet", tmp_path / "runs", name,
                       data={"val_path": str(tmp_path / "val.parquet")},
                       train={"epochs": 2, "batch_size": 64, "lr": 0.5, "optimizer": {"name": "sgd"}})
        return cli_summary(capsys, "run", str(write_spec(tmp_path / f"{name}.yaml", raw)))

    materialized = run("materialized")
    monkeypatch.setattr(data, "MATERIALIZE_BYTES", 0)
    streamed = run("streamed")
    assert kinds == {"materialized": {True}, "streamed": {False}}
    assert streamed["steps_done"] == materialized["steps_done"] == 2
    for a, b in zip(streamed["history"], materialized["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    one, other = (load_exported(str(tmp_path / "runs" / n)).state_dict() for n in ("materialized", "streamed"))
    import torch
    for key in one:
        torch.testing.assert_close(other[key], one[key], rtol=1e-5, atol=1e-6)


def test_jsonl_byte_ranges_hold_every_line_once(tmp_path):
    """However a JSONL file is cut into byte ranges, each line is in exactly one range, whole."""
    import pyarrow.fs as pafs
    rng = np.random.default_rng(0)
    lines = [json.dumps({"text": "w" * int(n)}) + "\n" for n in rng.integers(0, 300, size=200)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(lines) + '{"text": "no newline at the end"}')
    body, fs = path.read_bytes(), pafs.LocalFileSystem()
    for step in (1, 7, 64, 333, 4096, len(body)):
        parts = [data.read_lines(fs, str(path), s, min(s + step, len(body))) for s in range(0, len(body), step)]
        assert b"".join(parts) == body, step
        whole = [p for p in parts if p]
        assert all(p.endswith(b"\n") for p in whole[:-1]) and not whole[-1].endswith(b"\n"), step


def write_lm(path, n: int, long_row: int | None = None) -> None:
    rows = [{"text": f"short text {i}"} for i in range(n)]
    if long_row is not None:
        rows[long_row]["text"] = "word " * 40
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_streamed_data_is_sampled_in_the_driver_and_length_checked_in_batches(tmp_path, tiny_gpt, monkeypatch):
    """Over MATERIALIZE_BYTES (lowered here; the rule is the same) `inspect` reads only the first
    SAMPLE_ROWS rows and counts the rest; `check_lengths` under `truncation: none` still reads
    every row, batch by batch, and names a row far past the sample and the first batch."""
    monkeypatch.setattr(data, "MATERIALIZE_BYTES", 1000)
    monkeypatch.setattr(data, "SAMPLE_ROWS", 10)
    write_lm(tmp_path / "lm.jsonl", 6000, long_row=5000)
    write_lm(tmp_path / "val.jsonl", 30)
    spec = text_spec(tmp_path, tiny_gpt, truncation="none", val_path=str(tmp_path / "val.jsonl"))
    plan = data.inspect(spec)
    assert plan.streamed and plan.row_counts == [6000, 30]
    assert [t.num_rows for _, t in plan.tables] == [10, 10]
    with pytest.raises(SpecError, match="data.path: .*lm.jsonl: row 5000: .* tokens, model.max_length is 12"):
        data.check_lengths(spec, plan, str(tiny_gpt))
    with pytest.raises(SpecError, match="streams"):  # what needs every row in the driver says so
        data.split_tables(spec, plan)


def test_streamed_data_needs_its_own_validation_data(tmp_path, tiny_gpt, monkeypatch):
    """A `val_fraction` split happens in the driver, so data over the limit must name its validation rows."""
    monkeypatch.setattr(data, "MATERIALIZE_BYTES", 1000)
    write_lm(tmp_path / "lm.jsonl", 200)
    with pytest.raises(SpecError, match="more than the 0.00 GiB that the driver splits by data.val_fraction; "
                                        "give the validation data as data.val_path"):
        data.inspect(text_spec(tmp_path, tiny_gpt))


def test_normalize_is_fitted_on_the_training_rows_only(tmp_path):
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    train.write_text("f0,f1,label\n1,7,0\n2,7,1\n3,7,0\n4,7,1\n")  # f1 constant: shifted, not divided by 0
    val.write_text("f0,f1,label\n100,0,0\n200,0,1\n")
    fields = {"features": ["f0", "f1"], "val_path": str(val)}
    info = data.inspect(spec_for(train, tmp_path, normalize="standard", **fields)).info
    assert info.feature_shift == [2.5, 7.0] and info.feature_scale == pytest.approx([1.25 ** 0.5, 1.0])
    info = data.inspect(spec_for(train, tmp_path, normalize="minmax", **fields)).info
    assert info.feature_shift == [1.0, 7.0] and info.feature_scale == [3.0, 1.0]
    assert data.inspect(spec_for(train, tmp_path, **fields)).info.feature_scale == []  # default: none
    # A val_fraction split: the statistics of exactly the training rows the workers get.
    pq.write_table(blobs(40, width=2), tmp_path / "b.parquet")
    spec = spec_for(tmp_path / "b.parquet", tmp_path, normalize="standard")
    plan = data.inspect(spec)
    x = data.feature_matrix(data.split_tables(spec, plan)[0], ["x"], "t").astype(np.float64)
    assert len(x) == 20 and plan.info.feature_shift == pytest.approx(x.mean(axis=0).tolist())
    assert plan.info.feature_scale == pytest.approx(x.std(axis=0).tolist())
    with pytest.raises(ValueError, match="data.normalize: scales the numeric features of an mlp"):
        JobSpec.model_validate({**mlp_spec(tmp_path / "b.parquet", tmp_path), "model": {"name": "hf", "path": "x"},
                                "data": {"path": "b.parquet", "text": "t", "normalize": "minmax"}})


def test_a_normalized_run_applies_its_scaling_in_every_later_use(ray_session, tmp_path, capsys):
    """Features far from 0 (offset 1000, spread x50): the run's model scales them itself, so
    `ftray.load` reproduces the validation accuracy on raw rows, and a re-run cannot change it."""
    import ftray
    from ftray import cli
    from ftray.models import load_exported
    from tests.conftest import write_spec
    t = blobs(160, width=4, seed=1)
    x = np.stack(t.column("x").to_numpy(zero_copy_only=False)) * 50 + 1000
    t = t.set_column(0, "x", pa.array(list(x.astype(np.float32)), type=pa.list_(pa.float32())))
    pq.write_table(t, tmp_path / "far.parquet")
    raw = mlp_spec(tmp_path / "far.parquet", tmp_path / "runs", "scaled",
                   data={"normalize": "standard"}, train={"epochs": 2, "batch_size": 16})
    path = write_spec(tmp_path / "scaled.yaml", raw)
    assert cli.main(["run", str(path)]) == 0, capsys.readouterr().err[-3000:]
    run_dir = tmp_path / "runs" / "scaled"
    s = json.loads((run_dir / "summary.json").read_text())
    spec = JobSpec.model_validate(raw)
    train_x = data.feature_matrix(data.split_tables(spec, data.inspect(spec))[0], ["x"], "t").astype(np.float64)
    model = load_exported(str(run_dir / "model")).eval()
    assert model.info.feature_shift == pytest.approx(train_x.mean(axis=0).tolist())  # kept with the model
    assert model.info.feature_scale == pytest.approx(train_x.std(axis=0).tolist())
    _, val = data.split_table(t, 0.2, seed=0)
    predicted = ftray.load(str(run_dir)).predict(val)  # raw rows in: the model scales them
    accuracy = np.mean(np.array(predicted) == val.column("label").to_numpy())
    assert accuracy == pytest.approx(s["metrics"]["val_accuracy"])
    capsys.readouterr()
    assert cli.main(["run", str(path), "--set", "data.normalize=minmax", "--set", "train.epochs=3"]) == 2
    assert "data.normalize ('standard' -> 'minmax') changed" in capsys.readouterr().err


def test_datasets_built_here_hold_the_tables_rows_in_order(ray_session):
    """`from_arrow_here` (block metadata computed in the driver, no Ray task) is Ray's `from_arrow`."""
    import ray
    tables = [pa.table({"x": np.arange(i * 5, i * 5 + 5), "y": [f"r{j}" for j in range(i * 5, i * 5 + 5)]})
              for i in range(3)]
    here, ray_made = data.from_arrow_here(tables), ray.data.from_arrow(tables)
    assert here.count() == ray_made.count() == 15 and here.num_blocks() == 3
    assert here.schema() == ray_made.schema()
    assert here.take_all() == ray_made.take_all() == [{"x": i, "y": f"r{i}"} for i in range(15)]
    assert [len(b["x"]) for b in here.iter_batches(batch_size=4)] == [4, 4, 4, 3]
