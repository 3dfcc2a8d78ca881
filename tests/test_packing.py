"""Packing that keeps examples apart (`ftray.packing`, `TokenizedRows` with `data.packing`, and
the packed forward of `HFClassifier`): whole examples per row, positions restarting at each,
no loss across a boundary, no attention across one."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from ftray import data, packing
from ftray.methods.base import task_loss
from ftray.models.base import ModelInfo
from ftray.models.hf import HFClassifier
from ftray.spec import JobSpec
from tests.conftest import REPO, job_summary, minilm_path

LIMIT = 40
# flex_attention compiles its kernel (minutes on a CPU): checked where a GPU runs the tests.
ATTENTION = ["sdpa", "eager"] + (["flex_attention"] if torch.cuda.is_available() else [])
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU host, its kernels are the ones checked


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer Llama (grouped-query attention, rotary positions: the positions matter) with
    random weights and MiniLM's tokenizer, saved locally."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    out = tmp_path_factory.mktemp("tiny_llama")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def spec(tmp_path, model_dir, packing: bool) -> JobSpec:
    return JobSpec.model_validate({
        "model": {"name": "hf", "path": str(model_dir), "max_length": LIMIT},
        "data": {"path": str(tmp_path / "sft.jsonl"), "task": "causal_lm", "prompt": "prompt",
                 "response": "response", "label": None, "packing": packing},
        "run": {"name": "t", "storage_path": str(tmp_path)}})


def sft_rows(n: int = 24, seed: int = 0) -> pa.Table:
    """Prompt/response pairs of varied lengths (3 to ~30 tokens), each one distinct."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "bravo", "delta", "echo", "golf", "hotel", "india", "kilo", "lima", "oscar"]
    return pa.Table.from_pylist([
        {"prompt": f"q{i} " + " ".join(rng.choice(words, size=rng.integers(0, 8))),
         "response": " ".join(rng.choice(words, size=rng.integers(1, 16)))} for i in range(n)])


def rows(tmp_path, model_dir, packing: bool, table: pa.Table | None = None) -> dict:
    table = sft_rows() if table is None else table
    return data.TokenizedRows(spec(tmp_path, model_dir, packing), {}, str(model_dir))(table)


def unpacked_examples(plain: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, labels) of each example, from unpacked rows (their attention mask)."""
    return [(ids[m == 1], lab[m == 1]) for ids, lab, m in
            zip(plain["input_ids"], plain["labels"], plain["attention_mask"])]


def locate(packed_ids: np.ndarray, ids: np.ndarray) -> tuple[int, int]:
    """(row, start) of the one place where `ids` lies whole inside a packed row."""
    found = [(r, s) for r, row in enumerate(packed_ids) for s in range(len(row) - len(ids) + 1)
             if (row[s:s + len(ids)] == ids).all()]
    assert len(found) == 1, f"an example is found whole {len(found)} times in the packed rows"
    return found[0]


def llama(model_dir, attn: str = "sdpa") -> HFClassifier:
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    return HFClassifier(hf.eval().to(DEVICE), ModelInfo(task="causal_lm"), str(model_dir))


def tensors(batch: dict) -> dict:
    return {k: torch.from_numpy(v).to(DEVICE) for k, v in batch.items()}


# ----------------------------------------------------------------------------------- the rows
def test_no_example_is_split_and_positions_restart_at_each(tmp_path, tiny_llama):
    """Every example lies whole in one packed row, its positions 0..n-1; fewer rows than examples;
    the tokens the loss scores are the same (first-token labels are never scored unpacked)."""
    packed, plain = rows(tmp_path, tiny_llama, True), rows(tmp_path, tiny_llama, False)
    examples = unpacked_examples(plain)
    assert "attention_mask" not in packed and len(packed["input_ids"]) < len(examples)
    covered = np.zeros(packed["input_ids"].shape, bool)
    for ids, labels in examples:
        r, s = locate(packed["input_ids"], ids)
        assert packed["position_ids"][r, s:s + len(ids)].tolist() == list(range(len(ids)))
        assert packed["labels"][r, s].item() == -100  # no loss across the boundary before it
        assert (packed["labels"][r, s + 1:s + len(ids)] == labels[1:]).all()
        covered[r, s:s + len(ids)] = True
    pad = ~covered  # padding only, never a target
    assert (packed["labels"][pad] == -100).all()
    assert (packed["labels"][:, 1:] != -100).sum() == (plain["labels"][:, 1:] != -100).sum()


def test_first_fit_decreasing_fills_rows_without_splitting():
    lengths = [7, 3, 5, 5, 2, 8, 1, 4]
    rows_ = packing.first_fit_decreasing(lengths, 10)
    assert sorted(i for row in rows_ for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows_)
    assert len(rows_) == 4 == -(-sum(lengths) // 10)  # as few rows as the tokens need here
    with pytest.raises(ValueError, match="does not fit"):
        packing.pack([([1] * 11, [1] * 11)], 10, 0)


# ----------------------------------------------------------------------------- the model side
@pytest.mark.parametrize("attn", ATTENTION)
def test_packed_per_example_loss_equals_unpacked(tmp_path, tiny_llama, attn):
    """Each example's summed token loss, read off the packed rows, equals its loss alone in an
    unpacked row (and so do the batch totals `evaluate` sums)."""
    packed, plain = rows(tmp_path, tiny_llama, True), rows(tmp_path, tiny_llama, False)
    model = llama(tiny_llama, attn)
    with torch.no_grad():
        p_out, u_out = model(tensors(packed)), model(tensors(plain))
    p_lab, u_lab = tensors(packed)["labels"], tensors(plain)["labels"]
    p_tok = task_loss("causal_lm", p_out, {"labels": p_lab}, "none").view(len(p_lab), -1)
    u_tok = task_loss("causal_lm", u_out, {"labels": u_lab[:, :u_out.shape[1]]}, "none").view(len(u_lab), -1)
    for k, (ids, _) in enumerate(unpacked_examples(plain)):
        r, s = locate(packed["input_ids"], ids)
        alone, together = u_tok[k].sum(), p_tok[r, s:s + len(ids) - 1].sum()  # position i scores token i+1
        assert torch.allclose(together, alone, rtol=1e-5, atol=1e-5), (k, float(together), float(alone))
    assert torch.allclose(p_tok.sum(), u_tok.sum(), rtol=1e-5)


@pytest.mark.parametrize("attn", ATTENTION)
def test_changing_one_example_leaves_the_others_logits(tmp_path, tiny_llama, attn):
    """Other tokens in one example of a packed row: the row's other examples' logits do not move."""
    packed = rows(tmp_path, tiny_llama, True)
    row = int(np.argmax([len(s) for s in packing.segments(packed["position_ids"])]))
    (s0, e0), *others = packing.segments(packed["position_ids"])[row]
    assert others, "the test needs a row with two or more blocks"
    changed = {k: v.copy() for k, v in packed.items()}
    changed["input_ids"][row, s0:e0] = np.random.default_rng(1).integers(1000, 2000, e0 - s0)
    model = llama(tiny_llama, attn)
    with torch.no_grad():
        before, after = model(tensors(packed))[row], model(tensors(changed))[row]
    assert not torch.allclose(before[s0:e0], after[s0:e0])
    assert (before[e0:] - after[e0:]).abs().max() <= 1e-6


def test_isolation_holds_under_lora_in_training_mode(tmp_path, tiny_llama):
    """The peft wrapper passes the positions on, and training mode (no cache) keeps examples apart."""
    from peft import LoraConfig, get_peft_model
    packed = rows(tmp_path, tiny_llama, True)
    model = llama(tiny_llama)
    model.hf = get_peft_model(model.hf, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.train()
    (s0, e0), *_ = packing.segments(packed["position_ids"])[0]
    changed = {k: v.copy() for k, v in packed.items()}
    changed["input_ids"][0, s0:e0] = 1500
    before, after = model(tensors(packed))[0], model(tensors(changed))[0]
    assert (before[e0:] - after[e0:]).abs().max() <= 1e-6


def test_model_attention_picks_the_implementation(tmp_path, tiny_llama):
    """`model.attention` reaches transformers; flex_attention is refused without GPUs (its CPU
    kernel compiles for minutes), with a message naming the key."""
    from ftray.models.hf import HFClassifier
    raw = spec(tmp_path, tiny_llama, True).model_dump()
    raw["model"]["attention"] = "eager"
    built = HFClassifier.build(JobSpec.model_validate(raw), ModelInfo(task="causal_lm"))
    assert built.hf.config._attn_implementation == "eager"
    raw["model"]["attention"] = "flex_attention"
    with pytest.raises(ValueError, match="model.attention: flex_attention is for GPUs"):
        JobSpec.model_validate(raw)
    raw["scaling"]["use_gpu"] = True
    assert JobSpec.model_validate(raw).model.attention == "flex_attention"


# here=False (Ray Data tasks transform the rows) ~40 s: slow; the True case keeps the rule in the default run
@pytest.mark.parametrize("here", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_an_epoch_is_the_packed_rows(ray_session, tmp_path, tiny_llama, monkeypatch, here):
    """The row counts that size an epoch (and so the LR schedule) are the packed rows the workers
    get, whether the driver or Ray Data tasks pack them."""
    import json
    if not here:
        monkeypatch.setattr(data, "TRANSFORM_HERE_BYTES", 0)
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows(40).to_pylist()))
    s = spec(tmp_path, tiny_llama, True)
    datasets, rows = data.ray_datasets(s, data.inspect(s))
    assert rows == {name: ds.count() for name, ds in datasets.items()}
    assert rows["train"] < 32 and rows["val"] < 8  # 40 examples, 20% held out, several to a row

# ---------------------------------------------------------------------------------- a whole run
@pytest.mark.slow  # two `ftray run`s of jobs/llm_sft.yaml: minutes on a 2-core machine
def test_packed_run_validates_like_an_unpacked_one(ray_session, tmp_path, capsys, monkeypatch):
    """jobs/llm_sft.yaml with and without packing, same data and seed, ends within 2% in
    validation loss. Its examples pack two to a row, so the packed run takes 16 rows a step: the
    same examples per step and steps per epoch as the unpacked run's 32 (with 32 packed rows it
    would take half the steps, and be behind after 6 epochs). Validation scores the same tokens in
    both: the first-token labels packing drops are ones the unpacked loss never scores."""
    monkeypatch.chdir(REPO)
    runs = {p: job_summary(capsys, "run", "llm_sft.yaml", tmp_path, "--set", f"run.name=packing-{p}",
                           "--set", f"data.packing={p}", "--set", f"train.batch_size={rows}")
            for p, rows in (("false", 32), ("true", 16))}
    plain, packed = (runs[p]["metrics"]["val_loss"] for p in ("false", "true"))
    assert abs(packed - plain) <= 0.02 * plain, (packed, plain)
