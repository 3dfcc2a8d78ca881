"""`grpo`: the built-in rewards and the check of a user's `module:function` (no Ray), the group
advantages and the clipped loss with its KL against hand values, a tiny `ftray run` through the CLI
(summary `start` beside `metrics`, every weight moved), bad input (exit 2 before Ray), a reward that
fails on a row at run time (status failed, the row named, the checkpoint kept), (slow) a run
killed mid-training that resumes to the uninterrupted run's metrics, and sweeps: searched keys
accepted and refused before Ray, and a tiny PBT sweep whose exploited trial resumes from its donor."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from ftray import cli
from ftray.methods.grpo import rewards
from ftray.methods.grpo.hooks import group_advantages, grpo_loss
from ftray.schema import SpecError
from tests.conftest import cli_summary, write_jsonl, write_spec

M = "tests.methods.grpo_rewards"


def test_builtin_rewards():
    exact = rewards.exact_match(r"([^\s.!?]+)[.!?]*\s*$")
    assert exact("p", "4 plus 18 is 22.", "22") == 1.0 and exact("p", "it is 21.", "22") == 0.0
    assert exact("p", "", "22") == 0.0
    grouped = rewards.exact_match(r"answer: (\w+)")  # the last match's first group
    assert grouped("p", "answer: no, answer: yes", "yes") == 1.0
    num = rewards.numeric(0.01)
    assert num("p", "3 plus 4 is 7.004", "7") == 1.0 and num("p", "7 or 8", "7") == 0.0
    assert num("p", "no number", "7") == 0.0 and num("p", "it is -2.5", "-2.5") == 1.0
    rx = rewards.regex(r"\w+( \w+)+\.")
    assert rx("p", " cat dog. ", None) == 1.0 and rx("p", "cat dog", None) == 0.0 and rx("p", "cat.", None) == 0.0
    assert rewards.valid_json("p", '{"a": [1, 2]}', None) == 1.0 and rewards.valid_json("p", "{a: 1}", None) == 0.0


def test_user_reward_is_checked_not_called():
    assert rewards.import_function(f"{M}:never_call").__name__ == "never_call"
    cases = {f"{M}:two_args": "does not take (prompt, completion, answer)",
             f"{M}:scorer": "is a Scorer, not a plain function", f"{M}:nothing": "has no 'nothing'",
             "no_such_module_x:f": "cannot import 'no_such_module_x'"}
    for name, message in cases.items():
        with pytest.raises(SpecError, match=re.escape(message)):
            rewards.import_function(name)


def test_score_names_the_row_of_a_bad_reward():
    with pytest.raises(rewards.RewardError, match=r"on training row 7 \(prompt 'hi'.*returned 'high', not a finite"):
        rewards.score(lambda p, c, a: "high", "m:f", 7, "training", "hi", "ok", None)
    with pytest.raises(rewards.RewardError, match=r"validation row 2 .*raised ZeroDivisionError"):
        rewards.score(lambda p, c, a: 1 / 0, "m:f", 2, "validation", "hi", "ok", None)
    for bad in (float("nan"), True, None):
        with pytest.raises(rewards.RewardError, match="not a finite number"):
            rewards.score(lambda p, c, a: bad, "m:f", 0, "training", "hi", "ok", None)
    assert rewards.score(lambda p, c, a: 1, "m:f", 0, "training", "hi", "ok", None) == 1.0


def test_group_advantages_and_loss_against_hand_values():
    # Group [1, 0, 0, 1]: mean 0.5, sample std sqrt(1/3); group [1, 1]... all equal: advantage 0.
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    s = math.sqrt(1 / 3)
    assert adv[0].tolist() == pytest.approx([0.5 / (s + 1e-4), -0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0.5 / (s + 1e-4)], rel=1e-5)
    assert adv[1].tolist() == [0.0] * 4
    # Two answers of 2 tokens, the second answer's second token masked out. Answer 0: A = 1, ratio
    # e^0.5 on token 0 (clipped to 1.2: the smaller of 1.65 and 1.2), e^-0.5 on token 1 (0.61);
    # answer 1: A = -1, ratio 1 on its one token: min(-1, -1) = -1.
    logp = torch.tensor([[-1.0, -2.0], [-1.0, -9.0]])
    old = torch.tensor([[-1.5, -1.5], [-1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, kl = grpo_loss(logp, old, None, torch.tensor([1.0, -1.0]), mask, 0.2, 0.0)
    answer0 = -(1.2 + math.exp(-0.5)) / 2
    assert float(loss) == pytest.approx((answer0 + 1.0) / 2, rel=1e-6) and float(kl) == 0.0
    # k3 KL with ref - logp = d: e^d - d - 1; ref = logp + ln 2 on every token: 2 - ln 2 - 1.
    ref = logp + math.log(2)
    loss_kl, kl = grpo_loss(logp, old, ref, torch.tensor([1.0, -1.0]), mask, 0.2, 0.5)
    k3 = 1 - math.log(2)
    assert float(kl) == pytest.approx(k3, rel=1e-6)
    assert float(loss_kl) == pytest.approx(float(loss) + 0.5 * k3, rel=1e-6)


def prompt_rows(n: int) -> list[dict]:
    return [{"prompt": f"say something about {i}.", "answer": str(i)} for i in range(n)]


def grpo_spec(tmp_path, tiny_gpt, name: str = "grpo_tiny", rows: int = 12, **method) -> dict:
    write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(rows))
    return {"model": {"name": "hf", "path": str(tiny_gpt), "max_length": 24},
            "data": {"path": str(tmp_path / "prompts.jsonl"), "task": "causal_lm", "prompt": "prompt",
                     "answer": "answer", "label": None, "val_fraction": 0.25, "shuffle_buffer": 0},
            "method": {"name": "grpo", "reward": f"{M}:length_reward", "group_size": 3, "max_new_tokens": 6,
                       "kl_coef": 0.1, **method},
            "train": {"epochs": 2, "batch_size": 3, "lr": 0.01},
            "scaling": {"num_workers": 1},
            "run": {"name": name, "storage_path": str(tmp_path / "runs"), "seed": 0}}


KEYS = {"val_loss", "val_reward", "val_answer_length"}
TRAIN_KEYS = {"train_reward", "train_kl", "train_answer_length", "train_equal_groups"}


def test_grpo_run_end_to_end(ray_session, tmp_path, tiny_gpt, capsys):
    """`ftray run` of grpo on 9 training prompts: the start's metrics beside the final ones, each
    epoch's training metrics in range, every weight moved."""
    from transformers import AutoModelForCausalLM
    s = cli_summary(capsys, "run", str(write_spec(tmp_path / "grpo.yaml", grpo_spec(tmp_path, tiny_gpt))))
    assert s["status"] == "succeeded" and s["epochs_done"] == 2 and s["steps_done"] == 6
    assert set(s["start"]) == set(s["metrics"]) == KEYS
    for m in s["history"]:
        assert TRAIN_KEYS <= set(m)
        assert 0 <= m["train_reward"] <= 1 and 0 <= m["train_equal_groups"] <= 1 and m["train_kl"] >= 0
        assert 1 <= m["train_answer_length"] <= 6
        # the timings: generating is part of the epoch, not all of it (scoring and updates are the rest)
        assert 0 < m["generate_share"] < 1 and m["generate_tokens_per_s"] > 0 and m["update_tokens_per_s"] > 0
    assert 0 <= s["start"]["val_reward"] <= 1 and s["start"]["val_loss"] == pytest.approx(1 - s["start"]["val_reward"])
    before = dict(AutoModelForCausalLM.from_pretrained(tiny_gpt).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(s["model"]).named_parameters())
    moved = [n for n, p in after.items() if not torch.equal(p, before[n])]
    assert len(moved) == len(after), sorted(set(after) - set(moved))


@pytest.mark.parametrize("change, message", [
    ({"data": {"answer": "expected"}}, "'expected'"),  # a column the file does not have
    ({"method": {"reward": f"{M}:scorer"}}, "is a Scorer, not a plain function"),
    ({"method": {"reward": f"{M}:two_args"}}, "does not take (prompt, completion, answer)"),
    ({"method": {"reward": "exact_match"}, "data": {"answer": None}}, "data.answer: reward: exact_match compares"),
    ({"method": {"reward": "not a reward"}}, "neither a built-in reward"),
    ({"method": {"reward": "regex"}}, "method.pattern: reward: regex needs"),
    ({"method": {"max_new_tokens": 22}}, "leaves 2 (data.truncation: left"),
])
def test_bad_input_exits_2_before_ray(tmp_path, tiny_gpt, no_ray, capsys, change, message):
    raw = grpo_spec(tmp_path, tiny_gpt)
    for section, values in change.items():
        raw[section].update(values)
    assert cli.main(["run", str(write_spec(tmp_path / "bad.yaml", raw))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftray: error: ") and message in err and "Traceback" not in err, err


@pytest.mark.slow  # a second Ray run; `score` naming the row stays in the default run (test_score_names...)
def test_reward_failing_on_a_row_fails_the_run_and_keeps_its_checkpoint(ray_session, tmp_path, tiny_gpt, capsys):
    raw = grpo_spec(tmp_path, tiny_gpt, name="grpo_boom", reward=f"{M}:raises_on_third_boom")
    write_jsonl(tmp_path / "val.jsonl", [{"prompt": "fine", "answer": "1"}, {"prompt": "boom", "answer": "2"}])
    raw["data"]["val_path"] = str(tmp_path / "val.jsonl")
    assert cli.main(["run", str(write_spec(tmp_path / "boom.yaml", raw))]) == 1
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    s = json.loads((folder / "summary.json").read_text())
    assert s["status"] == "failed" and s["epochs_done"] == 1 and s["checkpoint"] and os.path.isdir(s["checkpoint"])
    assert "validation row 1 (prompt 'boom'" in s["error"] and "raised ZeroDivisionError" in s["error"], s["error"]


@pytest.mark.slow  # two runs and a restarted worker group, ~2 min
def test_killed_run_resumes_to_the_uninterrupted_metrics(ray_session, tmp_path, tiny_gpt, capsys, monkeypatch):
    from ftray import faults
    straight = cli_summary(capsys, "run", str(write_spec(tmp_path / "a.yaml", grpo_spec(tmp_path, tiny_gpt, "straight"))))
    raw = grpo_spec(tmp_path, tiny_gpt, "killed")
    raw["run"]["max_failures"] = 1
    monkeypatch.setenv(faults.KILL_AT_STEPS_ENV, "5")  # mid-epoch 2 (3 steps an epoch)
    killed = cli_summary(capsys, "run", str(write_spec(tmp_path / "b.yaml", raw)))
    assert [r["step"] for r in killed["resumes"]] == [3] and killed["steps_done"] == straight["steps_done"]
    for a, b in zip(killed["history"], straight["history"]):
        for key in ("train_loss", "train_reward", "train_kl", "val_reward", "val_answer_length"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_chat_prompts_end_with_the_generation_prompt(tmp_path, tiny_gpt):
    """Chat turns ending with a user turn are prompts (no assistant turn needed); the model answers
    after the template's generation prompt, and the reward gets the turns back."""
    from transformers import AutoTokenizer

    from ftray import data
    from ftray.spec import JobSpec
    turns = [[{"role": "user", "content": f"add {i} and 1."}] for i in range(6)]
    write_jsonl(tmp_path / "c.jsonl", [{"m": t, "a": i + 1} for i, t in enumerate(turns)])  # numbers as answers
    raw = grpo_spec(tmp_path, tiny_gpt, reward="numeric")
    raw["model"]["max_length"] = 40
    raw["data"].update(path=str(tmp_path / "c.jsonl"), prompt=None, messages="m", answer="a", chat_template="chatml")
    spec = JobSpec.model_validate(raw)
    out = data.PromptRows(spec, str(tiny_gpt))(data.inspect(spec).train_table)
    text = AutoTokenizer.from_pretrained(tiny_gpt).decode(out["prompt_ids"][0][out["prompt_mask"][0] == 1])
    assert text.replace(" ", "").endswith("<|im_start|>assistant") and "add" in text
    assert out["prompt_ids"].shape[1] == 40 - 6 and out["prompt_mask"][0][0] == 0  # left-padded, room for 6
    assert json.loads(out["prompt"][0]) == turns[0] and out["answer"].tolist()[:2] == ["1", "2"]


@pytest.mark.parametrize("method", ["grpo", "dpo"])
@pytest.mark.parametrize("change, message", [
    ({"packing": True}, "data.packing: method.name: {name} "),
    ({"prompt": None, "text": "prompt"}, "data.prompt: method.name: {name} reads "),
])
def test_prompt_row_rules_are_shared_by_grpo_and_the_pair_methods(tmp_path, tiny_gpt, method, change, message):
    """The rules every method that reads prompt rows keeps (`spec.job._check_prompt_rows`)."""
    from ftray.spec import SpecError, validate
    from tests.methods.test_dpo import pair_spec
    raw = grpo_spec(tmp_path, tiny_gpt) if method == "grpo" else pair_spec(tmp_path, tiny_gpt)
    raw["data"].update(change)
    with pytest.raises(SpecError, match=re.escape(message.format(name=method))):
        validate(raw, "job.yaml")


# ------------------------------------------------------------------------------------- sweeps
GRPO_SPACE = {"train.lr": {"loguniform": [0.001, 0.05]}, "method.temperature": {"uniform": [0.5, 1.5]}}


def grpo_sweep_spec(tmp_path, tiny_gpt, space=None, **tune) -> dict:
    raw = grpo_spec(tmp_path, tiny_gpt, name="grpo_pbt_tiny")
    raw["tune"] = {"trial": "packed", "metric": "val_reward", "mode": "max", "num_samples": 2, "max_concurrent": 2,
                   "scheduler": {"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5, "synch": True},
                   "space": space or GRPO_SPACE, **tune}
    return raw


@pytest.mark.parametrize("space, message", [
    ({"method.beta": {"uniform": [0.1, 0.5]}}, "tune.space.method.beta = 0.1: unknown key"),
    ({"method.group_size": {"choice": [1, 4]}}, "tune.space.method.group_size = 1: Input should be greater than or equal to 2"),
    ({"method.temperature": {"uniform": [0.0, 1.0]}}, "tune.space.method.temperature = 0.0: Input should be greater than 0"),
    ({"method.tempreature": {"uniform": [0.5, 1.0]}}, "tune.space.method.tempreature = 0.5: unknown key"),
])
def test_sweep_refuses_a_searched_key_grpo_lacks_or_a_bad_value(tmp_path, tiny_gpt, no_ray, capsys, space, message):
    path = write_spec(tmp_path / "bad_sweep.yaml", grpo_sweep_spec(tmp_path, tiny_gpt, space, scheduler={"name": "fifo"}))
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err, err


def test_sweep_accepts_grpo_lr_group_size_temperature_and_pbt_over_temperature(tmp_path, tiny_gpt, no_ray, capsys):
    space = {"train.lr": {"loguniform": [0.001, 0.05]}, "method.group_size": {"choice": [2, 4, 8]},
             "method.temperature": {"uniform": [0.5, 1.5]}}
    fifo = write_spec(tmp_path / "sweep.yaml", grpo_sweep_spec(tmp_path, tiny_gpt, space, scheduler={"name": "fifo"}))
    assert cli.main(["validate", str(fifo)]) == 0, capsys.readouterr().err
    # PBT may change the rollout temperature of a running trial: it alone is enough to mutate.
    pbt = write_spec(tmp_path / "pbt.yaml", grpo_sweep_spec(tmp_path, tiny_gpt, {"method.temperature": GRPO_SPACE[
        "method.temperature"]}))
    assert cli.main(["validate", str(pbt)]) == 0, capsys.readouterr().err


def test_pbt_exploit_resumes_a_grpo_trial_from_its_donor(ray_session, tmp_path, tiny_gpt, capsys):
    """Two packed GRPO trials, PBT after epoch 1 (of 2): the worse trial continues from the better
    one's checkpoint. Its history is then the donor's epoch 1 (weights, step count and metrics
    came with the checkpoint), its own first epoch is gone, and its second epoch trains from the
    donor's step count with its mutated lr and temperature."""
    path = write_spec(tmp_path / "pbt.yaml", grpo_sweep_spec(tmp_path, tiny_gpt))
    assert cli.main(["sweep", str(path)]) == 0, capsys.readouterr().err[-3000:]
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["trials"] == 2
    assert summary["pbt"]["exploits"] == 1, summary["pbt"]  # none at the last epoch
    step = summary["pbt"]["log"][0]
    target, donor = step["trial_id"], step["copied_id"]
    assert target and donor and target != donor

    def trial(name):
        return json.loads((folder / "trials" / name / "summary.json").read_text())
    t, d = trial(target), trial(donor)
    assert t["status"] == d["status"] == "succeeded" and t["epochs_done"] == d["epochs_done"] == 2
    keys = ("step", "train_loss", "train_reward", "train_kl", "val_reward", "val_answer_length")
    assert {k: t["history"][0][k] for k in keys} == {k: d["history"][0][k] for k in keys}
    # Synchronous PBT pauses the whole population at the perturbation: the donor continues from its
    # own checkpoint, the target from the donor's; both at the end of epoch 1.
    assert t["resumes"] == d["resumes"] == [{"epoch": 1, "step": 3}]
    assert t["history"][1]["step"] == 6 == t["steps_done"]
    assert t["history"][1]["lr"] == pytest.approx(step["new_config"]["train.lr"])  # constant schedule
    assert t["config"] == step["new_config"] and t["config"]["train.lr"] != d["config"]["train.lr"]
    # What the target itself reported for epoch 1 (Tune's results) is not what its history now says.
    own = [json.loads(line) for p in (folder / "tune").glob(f"*{target}*/result.json") for line in p.open()]
    # Tune rewrites a restored trial's result.json at times (seen in CI: only the epoch-2 row left),
    # so the target's own epoch-1 report is compared only where it is still there.
    for first in (r for r in own if r["epoch"] == 1):
        assert first["train_loss"] != d["history"][0]["train_loss"]
