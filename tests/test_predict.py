"""`ftray.load`, `ftray predict` and `ftray eval` (ftray/predict.py) on real runs: predictions
match the run's own validation figures, generations match transformers' generate, an ensemble and
a LoRA adapter load, bad input exits 2 before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ftray
from ftray import cli, data, predict
from ftray.spec import load_spec
from tests.conftest import REPO, cli_last_line, minilm_path, texts, write_jsonl


_run = cli_last_line


def _accuracy(table: pa.Table) -> float:
    return float((np.array(table.column("prediction").to_pylist()) == np.array(table.column("label").to_pylist())).mean())


def test_predict_keeps_every_row_and_matches_the_runs_validation(digits_runs):
    run, ens, val, tmp = digits_runs
    out = _run("predict", str(run), "--data", str(val), "--out", str(tmp / "preds.parquet"), "--concurrency", "2",
               "--batch-size", "32")
    got, want = pq.read_table(out), pq.read_table(val)
    # One row per input row, in order (6 batches over 2 actors), every input column kept.
    assert got.column("id").to_pylist() == list(range(want.num_rows))
    assert got.select(want.column_names).equals(want)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["val_rows"] == want.num_rows == 180
    assert _accuracy(got) == summary["metrics"]["val_accuracy"]
    probs = np.array(got.column("probabilities").to_pylist())
    assert probs.shape == (180, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == np.array(got.column("prediction").to_pylist())).all()

    # The Python API on a plain list of dicts (the exported mlp itself wants {"x": tensor}).
    rows = [{"pixels": p} for p in want.column("pixels").to_pylist()[:7]]
    assert ftray.load(str(run)).predict(rows) == got.column("prediction").to_pylist()[:7]
    assert ftray.load(str(run / "model")).predict(want.to_pandas()) == got.column("prediction").to_pylist()

    # The sweep's ensemble, predicted from the sweep folder, into CSV: its validation figure again.
    out = _run("predict", str(ens), "--data", str(val), "--out", str(tmp / "ens.csv"))
    import pyarrow.csv as pacsv
    csv = pacsv.read_csv(out)
    assert csv.column("id").to_pylist() == list(range(180))
    ens_summary = json.loads((ens / "summary.json").read_text())["ensemble"]
    # (the sweep reports its figure as a float32 mean: compare the counts of correct rows)
    assert round(_accuracy(csv) * 180) == round(ens_summary["metric"]["val_accuracy"] * 180)
    assert len(json.loads(csv.column("probabilities")[0].as_py())) == 10

    # `ftray eval` on both: one table, an eval.json each, the accuracy predict's.
    import contextlib
    import io
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["eval", str(run), str(ens), "--data", str(val)]) == 0
    table = printed.getvalue().splitlines()
    assert table[0].split() == ["run", "rows", "accuracy", "macro_f1"] and len(table) == 3
    for line, folder, acc in ((table[1], run, _accuracy(got)), (table[2], ens, _accuracy(csv))):
        result = json.loads((folder / "eval.json").read_text())
        assert line.split()[:2] == [str(folder), "180"] and result["metrics"]["accuracy"] == acc
        assert np.trace(result["confusion_matrix"]) == round(acc * 180)
        assert Path(result["confusion_png"]).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("case", ["missing column", "unknown run", "bad extension", "not a run", "no cpus"])
def test_bad_input_exits_2_before_ray_starts(digits_runs, no_ray, capsys, case):
    run, ens, val, tmp = digits_runs
    pq.write_table(pa.table({"label": [1, 2]}), tmp / "nopix.parquet")
    argv, expected = {
        "missing column": ([str(run), "--data", str(tmp / "nopix.parquet"), "--out", str(tmp / "o.parquet")],
                           f"--data: {tmp / 'nopix.parquet'}: no column 'pixels'"),
        "unknown run": ([str(tmp / "nope"), "--data", str(val), "--out", str(tmp / "o.parquet")], "RUN: "),
        "bad extension": ([str(run), "--data", str(val), "--out", str(tmp / "o.xlsx")], "--out: "),
        "not a run": ([str(tmp), "--data", str(val), "--out", str(tmp / "o.parquet")], "not an ftray run"),
        "no cpus": ([str(run), "--data", str(val), "--out", str(tmp / "o.parquet"), "--cpus-per-actor", "0"],
                    "--cpus-per-actor: must be at least 1, got 0"),
    }[case]
    assert cli.main(["predict", *argv]) == 2
    assert expected in capsys.readouterr().err
    if case not in ("bad extension", "no cpus"):  # eval writes no output file, has no actors
        assert cli.main(["eval", argv[0], "--data", argv[2]]) == 2
        assert expected in capsys.readouterr().err


def test_the_pool_gets_one_batch_per_block_and_its_threads(digits_runs):
    """The file (one Parquet block as Ray Data reads it) reaches the actors as one block per batch,
    so every actor of the pool has work; each actor's torch threads are its `--cpus-per-actor`."""
    import torch
    run, _, val, tmp = digits_runs
    args = cli._parser().parse_args(["predict", str(run), "--data", str(val), "--out", str(tmp / "b.parquet"),
                                          "--concurrency", "2", "--cpus-per-actor", "2", "--batch-size", "50"])
    job = predict.check_predict(args)
    assert (job.concurrency, job.cpus_per_actor) == (2, 2)
    sizes = [b.num_rows for b in predict.predicted(job).iter_batches(batch_size=None, batch_format="pyarrow")]
    assert sizes == [50, 50, 50, 30]
    before = torch.get_num_threads()
    try:
        actor = predict.PredictBatches(str(run), "cpu", predict.Generation(), 50, threads=2)
        assert torch.get_num_threads() == 2
        assert actor(pq.read_table(val).slice(0, 5)).column("prediction").length() == 5
    finally:
        torch.set_num_threads(before)


def test_causal_lm_generations_are_transformers_generate(llm_run, tmp_path):
    """A tiny random Llama (jobs/llm_sft.yaml, small): greedy generations equal transformers'
    generate on the exported model, one prompt at a time; eval's perplexity is the run's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    run, rows, sft, _ = llm_run
    prompts = [{"prompt": r["prompt"]} for r in rows[:6]]
    write_jsonl(tmp_path / "prompts.jsonl", prompts)
    out = _run("predict", str(run), "--data", str(tmp_path / "prompts.jsonl"), "--out", str(tmp_path / "gen.jsonl"),
               "--max-new-tokens", "8", "--batch-size", "4")
    got = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert [g["id"] for g in got] == list(range(6)) and [g["prompt"] for g in got] == [p["prompt"] for p in prompts]
    model, tok = AutoModelForCausalLM.from_pretrained(run / "model").eval(), AutoTokenizer.from_pretrained(run / "model")
    want = []
    for p in prompts:
        ids = torch.tensor([tok(p["prompt"])["input_ids"]])
        with torch.no_grad():
            new = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.sep_token_id)[0, ids.shape[1]:]
        want.append(tok.decode(new, skip_special_tokens=True))
    assert [g["prediction"] for g in got] == want and any(want)
    # A stop string cuts the text before its first occurrence.
    stop = want[0][-1]
    stopped = ftray.load(str(run), generation=predict.Generation(max_new_tokens=8, stop=[stop]))
    assert stopped.predict(prompts[:1]) == [want[0][:want[0].index(stop)]]

    spec = load_spec(REPO / "jobs" / "llm_sft.yaml", [f"data.path={sft}", "data.val_fraction=0.25"])
    pq.write_table(data.validation_table(spec, data.inspect(spec)), tmp_path / "val.parquet")
    result = predict.evaluate(str(run), str(tmp_path / "val.parquet"))
    summary = json.loads((run / "summary.json").read_text())
    assert result["metrics"]["perplexity"] == pytest.approx(summary["metrics"]["val_perplexity"], rel=1e-4)


def test_lora_adapter_folder_predicts_as_the_merged_model(lora_runs):
    """A LoRA run's export is the merged model; its `model/adapter/` loads over the base instead."""
    run = lora_runs[0]
    rows = [{"text": r["text"]} for r in texts(12, seed=1)]
    merged, adapter = ftray.load(str(run)), ftray.load(str(run / "model" / "adapter"))
    assert adapter.ref.adapter is not None and merged.ref.adapter is None
    a, b = merged.predict_columns(rows), adapter.predict_columns(rows)
    assert list(a["prediction"]) == list(b["prediction"])
    assert np.allclose(a["probabilities"], b["probabilities"], atol=1e-5)
    assert minilm_path()  # the tokenizer both use is MiniLM's (tiny_bert saved it)


def test_output_writers_stream_batches_into_one_file(tmp_path):
    batches = [pa.table({"x": [[1.0, 2.0]], "prediction": ["a"]}), pa.table({"x": [[3.0, 4.0]], "prediction": ["b"]})]
    for ext in ("parquet", "jsonl", "csv"):
        out = tmp_path / f"o.{ext}"
        assert predict.write_stream(predict.with_ids(iter(batches)), out, predict.OUT_FORMATS[f".{ext}"]) == 2
        assert not list(tmp_path.glob(".*.part"))
    assert pq.read_table(tmp_path / "o.parquet").to_pylist() == [
        {"id": 0, "x": [1.0, 2.0], "prediction": "a"}, {"id": 1, "x": [3.0, 4.0], "prediction": "b"}]
    assert (tmp_path / "o.jsonl").read_text().splitlines()[1] == '{"id": 1, "x": [3.0, 4.0], "prediction": "b"}'
    assert (tmp_path / "o.csv").read_text().splitlines() == ['"id","x","prediction"', '0,"[1.0, 2.0]","a"',
                                                            '1,"[3.0, 4.0]","b"']
    assert predict.cut_at_stop("one two. three", [".", "two"]) == "one "
