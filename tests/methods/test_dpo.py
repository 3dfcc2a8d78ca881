"""Preference methods (`dpo`, `simpo`): the sequence log-probs, each loss and the metrics against
values worked by hand, the LoRA reference (the base with adapters off) and the precomputed one
against the live one, a tiny `ftray run` through the CLI (summary `start` beside `metrics`,
trainable weights moved), and sweeps over beta (bad searched keys refused before Ray, a 2-trial sweep)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ftray.methods import get_method
from ftray.methods.dpo.hooks import (ReferenceLogps, dpo_loss, pair_logps, preference_metrics, preference_sums,
                                     sequence_logps, simpo_loss)
from ftray.models import ModelInfo
from ftray.spec import JobSpec
from tests.conftest import cli_summary, write_jsonl, write_spec

LM = ModelInfo(task="causal_lm")
METRICS = {"val_loss", "val_preference_accuracy", "val_logprob_preference", "val_reward_margin",
           "val_chosen_logp", "val_rejected_logp"}


def test_sequence_logps_sum_and_length_normalize_the_labelled_tokens():
    # Vocabulary of 2. Position i predicts token i + 1: logits [0, 0] give each token 1/2, logits
    # [ln 3, 0] give token 1 a quarter. Row 0 labels tokens 1 (0) and 2 (1): ln(1/2) + ln(1/4) over
    # 2 tokens; row 1 labels token 2 only: ln(1/4). The labels are padded past the logits' width
    # (the model cuts a batch to its longest row): the padding counts nothing.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]] * 2)
    labels = torch.tensor([[-100, 0, 1, -100, -100], [-100, -100, 1, -100, -100]])
    summed, mean = sequence_logps(logits, labels)
    assert summed.tolist() == pytest.approx([math.log(1 / 8), math.log(1 / 4)], rel=1e-6)
    assert mean.tolist() == pytest.approx([math.log(1 / 8) / 2, math.log(1 / 4)], rel=1e-6)


def test_dpo_losses_against_hand_values():
    # policy - reference: chosen -1 - (-2) = 1, rejected -3 - (-2) = -1: margin 2; beta 0.5 -> 1.
    args = [torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0)]
    sigmoid = float(dpo_loss("sigmoid", 0.5, 0.0, *args))
    assert sigmoid == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    smoothed = float(dpo_loss("sigmoid", 0.5, 0.1, *args))  # 0.9 of the pair as labelled, 0.1 flipped
    assert smoothed == pytest.approx(0.9 * math.log(1 + math.exp(-1)) + 0.1 * math.log(1 + math.exp(1)), rel=1e-6)
    assert float(dpo_loss("ipo", 0.5, 0.0, *args)) == pytest.approx((2 - 1 / (2 * 0.5)) ** 2)  # 1
    assert float(dpo_loss("ipo", 0.25, 0.0, *args)) == pytest.approx(0.0, abs=1e-7)  # margin = 1 / (2 beta)


def test_simpo_loss_against_a_hand_value():
    # beta 2 x (-0.5 - (-1)) - gamma 1 = 0: -log sigmoid(0) = ln 2; a wider margin costs less.
    assert float(simpo_loss(2.0, 1.0, torch.tensor(-0.5), torch.tensor(-1.0))) == pytest.approx(math.log(2))
    assert float(simpo_loss(2.0, 1.0, torch.tensor(0.0), torch.tensor(-1.0))) == pytest.approx(math.log(1 + math.exp(-1)))


def test_preference_metrics_on_a_hand_made_batch():
    # Rewards prefer chosen in pair 0 only (pair 2 is a tie, which does not count); the policy's
    # length-normalized log-probs prefer chosen in pairs 0 and 2.
    logps = {"chosen_mean": torch.tensor([-1.0, -2.0, -3.0]), "rejected_mean": torch.tensor([-2.0, -1.0, -4.0]),
             "chosen_sum": torch.tensor([-2.0, -4.0, -9.0]), "rejected_sum": torch.tensor([-4.0, -2.0, -8.0])}
    sums = preference_sums(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, -1.0, 0.5]),
                           torch.tensor([0.0, 0.0, 0.5]), logps)
    m = preference_metrics(sums)
    assert set(m) == METRICS
    assert m["val_loss"] == pytest.approx(0.2)
    assert m["val_preference_accuracy"] == pytest.approx(1 / 3)
    assert m["val_logprob_preference"] == pytest.approx(2 / 3)
    assert m["val_reward_margin"] == pytest.approx((1 - 1 + 0) / 3)
    assert m["val_chosen_logp"] == pytest.approx(-5.0) and m["val_rejected_logp"] == pytest.approx(-14 / 3)


def pair_rows(n: int) -> list[dict]:
    """Prompts about colours; the chosen answer is a sentence, the rejected one the bare word."""
    colours = ["red", "green", "blue", "black", "white", "yellow"]
    return [{"prompt": f"name colour {i}.", "chosen": f"colour {i} is {colours[i % 6]}.",
             "rejected": colours[(i + 1) % 6]} for i in range(n)]


def pair_spec(tmp_path, tiny_gpt, **method) -> dict:
    write_jsonl(tmp_path / "pairs.jsonl", pair_rows(12))
    return {"model": {"name": "hf", "path": str(tiny_gpt), "max_length": 24},
            "data": {"path": str(tmp_path / "pairs.jsonl"), "task": "causal_lm", "prompt": "prompt",
                     "chosen": "chosen", "rejected": "rejected", "label": None, "val_fraction": 0.25,
                     "shuffle_buffer": 0},
            "method": {"name": "dpo", **method},
            "train": {"epochs": 2, "batch_size": 4, "lr": 0.01},
            "run": {"name": "dpo_tiny", "storage_path": str(tmp_path / "runs"), "seed": 0}}


def encoded_batch(spec: JobSpec) -> dict:
    from ftray import data
    plan = data.inspect(spec)
    rows = data.row_transform(spec, plan)(plan.train_table.slice(0, 4))
    return {k: torch.as_tensor(v) for k, v in rows.items()}


def test_pair_rows_label_the_answers_only(tmp_path, tiny_gpt):
    from transformers import AutoTokenizer
    spec = JobSpec.model_validate(pair_spec(tmp_path, tiny_gpt))
    batch = encoded_batch(spec)
    tok = AutoTokenizer.from_pretrained(tiny_gpt)
    for part, answer in (("chosen", "colour 0 is red."), ("rejected", "green")):
        labels = batch[f"{part}_labels"][0]
        assert tok.decode(labels[labels != -100]) == f"{answer} [SEP]"  # the answer and its end token
        prompt = len(tok("name colour 0.")["input_ids"])
        assert (labels[:prompt] == -100).all() and int(batch[f"{part}_attention_mask"][0].sum()) == \
            prompt + len(tok(answer, add_special_tokens=False)["input_ids"]) + 1


def test_precomputed_reference_is_the_live_one_and_lora_turns_adapters_off(tmp_path, tiny_gpt):
    spec = JobSpec.model_validate(pair_spec(tmp_path, tiny_gpt, reference="live"))
    batch = encoded_batch(spec)
    live = get_method(spec)
    live.build(LM, None)
    live.attach(torch.device("cpu"))
    pre = ReferenceLogps(spec, LM)({k: v.numpy() for k, v in batch.items()})
    got = live.reference_logps(batch)
    assert torch.allclose(got[0], torch.as_tensor(pre["ref_chosen_logp"])) and \
        torch.allclose(got[1], torch.as_tensor(pre["ref_rejected_logp"]))
    # LoRA: the adapters moved away from zero change the policy, not the reference (the base).
    lora = get_method(JobSpec.model_validate(pair_spec(tmp_path, tiny_gpt, reference="live",
                                                       lora={"target_modules": "all-linear"})))
    model = lora.build(LM, None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ref = lora.reference_logps(batch)
    assert torch.allclose(ref[0], got[0], atol=1e-5) and torch.allclose(ref[1], got[1], atol=1e-5)
    policy = pair_logps(model, batch)
    assert not torch.allclose(policy["chosen_sum"], ref[0], atol=1e-3)


def test_dpo_run_end_to_end(ray_session, tmp_path, tiny_gpt, capsys):
    """`ftray run` of dpo on 9 training pairs: summary.json holds the start's metrics beside the
    final ones (the same keys), the start's implicit rewards are all 0 (policy = reference), and
    every weight moved."""
    from transformers import AutoModelForCausalLM
    s = cli_summary(capsys, "run", str(write_spec(tmp_path / "dpo.yaml", pair_spec(tmp_path, tiny_gpt, beta=0.5))))
    assert s["status"] == "succeeded" and s["epochs_done"] == 2
    assert set(s["start"]) == set(s["metrics"]) == METRICS
    assert s["start"]["val_reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert s["start"]["val_preference_accuracy"] == 0.0  # ties do not count as preferring chosen
    assert s["metrics"]["val_loss"] < s["start"]["val_loss"] == pytest.approx(math.log(2), abs=1e-4)
    before = dict(AutoModelForCausalLM.from_pretrained(tiny_gpt).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(s["model"]).named_parameters())
    assert s["params"]["trainable"] == s["params"]["total"]
    moved = [n for n, p in after.items() if not torch.equal(p, before[n])]
    assert len(moved) == len(after), sorted(set(after) - set(moved))
    assert np.isfinite(s["metrics"]["val_chosen_logp"])
    # Both answers of a pair count as tokens fed (the throughput DPO is compared to SFT by).
    assert all(h["tokens_per_s"] > 0 for h in s["history"])


def test_sweeps_and_early_stopping_watch_the_preference_metrics(tmp_path, tiny_gpt):
    from ftray.spec import SpecError, validate
    raw = pair_spec(tmp_path, tiny_gpt)
    raw["tune"] = {"space": {"method.beta": {"loguniform": [0.01, 1.0]}}, "metric": "val_preference_accuracy",
                   "mode": "max", "num_samples": 2}
    raw["train"]["early_stopping"] = {"metric": "val_logprob_preference", "mode": "max", "patience": 2}
    spec = validate(raw, "job.yaml")
    assert spec.validation_metrics[0] == "val_preference_accuracy"
    raw["tune"]["metric"] = "val_perplexity"  # a causal_lm metric that preference runs do not report
    with pytest.raises(SpecError, match="tune.metric: 'val_perplexity' is not reported"):
        validate(raw, "job.yaml")


def test_chat_pairs_label_the_last_answer_only(tmp_path, tiny_gpt):
    """After chat turns the answer is the last assistant turn, and only it carries labels (an
    earlier assistant turn of the prompt does not, whatever data.train_on says)."""
    from transformers import AutoTokenizer

    from ftray import data
    raw = pair_spec(tmp_path, tiny_gpt)
    raw["model"]["max_length"] = 64
    raw["data"].update(prompt=None, messages="messages", chat_template="chatml")
    spec = JobSpec.model_validate(raw)
    tok = AutoTokenizer.from_pretrained(tiny_gpt)
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there."},
             {"role": "user", "content": "how are you?"}]
    (c_ids, c_lab), (r_ids, r_lab) = data.encode_pair(tok, spec, turns, "fine thanks.", "go away")
    chosen = tok.decode([t for t in c_lab if t != -100])
    assert chosen.startswith("fine thanks.") and "hello" not in chosen
    assert tok.decode([t for t in r_lab if t != -100]).startswith("go away")
    first = next(i for i, t in enumerate(c_lab) if t != -100)
    assert c_ids[:first] == r_ids[:first]  # the same prompt before either answer


@pytest.mark.parametrize("space, message", [
    ({"method.temperature": {"uniform": [0.5, 1.0]}}, "tune.space.method.temperature = 0.5: unknown key"),
    ({"method.beta": {"loguniform": [0.01, 200.0]}}, "tune.space.method.beta = 200.0: Input should be less than"),
    ({"method.beta": {"choice": [0.1, 0.0]}}, "tune.space.method.beta = 0.0: Input should be greater than 0"),
])
def test_sweep_refuses_a_searched_key_dpo_lacks_or_a_bad_beta(tmp_path, tiny_gpt, no_ray, capsys, space, message):
    from ftray import cli
    raw = pair_spec(tmp_path, tiny_gpt)
    raw["tune"] = {"space": space, "metric": "val_preference_accuracy", "mode": "max", "num_samples": 2}
    path = write_spec(tmp_path / "bad_sweep.yaml", raw)
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err, err


def test_beta_sweep_of_two_trials(ray_session, tmp_path, tiny_gpt, capsys):
    """`ftray sweep` over method.beta (a grid of 2, packed trials, 1 epoch) ranked by
    val_preference_accuracy: each trial trains with its own beta (same data, seed and lr, so the
    losses differ by beta alone), and best.yaml carries the best trial's beta."""
    import json
    from pathlib import Path

    import yaml
    raw = pair_spec(tmp_path, tiny_gpt, reference="live")  # no Ray Data pass in each trial: faster
    raw["train"]["epochs"] = 1
    raw["run"]["name"] = "dpo_beta"
    raw["tune"] = {"space": {"method.beta": {"grid": [0.05, 2.0]}}, "metric": "val_preference_accuracy",
                   "mode": "max", "num_samples": 1, "max_concurrent": 2, "trial": "packed"}
    s = cli_summary(capsys, "sweep", str(write_spec(tmp_path / "beta.yaml", raw)))
    assert s["status"] == "succeeded" and s["trials"] == 2 and s["errors"] == 0
    folder = Path(s["best"]["run"]).parent.parent
    trials = [json.loads((t / "summary.json").read_text()) for t in (folder / "trials").iterdir()]
    assert sorted(t["config"]["method.beta"] for t in trials) == [0.05, 2.0]
    assert all(t["status"] == "succeeded" and 0 <= t["metrics"]["val_preference_accuracy"] <= 1 for t in trials)
    assert trials[0]["history"][0]["train_loss"] != pytest.approx(trials[1]["history"][0]["train_loss"], rel=1e-4)
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["method"]["beta"] == s["best"]["config"]["method.beta"] and "tune" not in best
