"""Every file in jobs/ validates and names its own command; the jobs run end to end as shipped and
give the figures README states (their values and tolerances come from tests/figures.py; the runs
are deterministic, so the tolerances are tight)."""

from __future__ import annotations

import re

import pytest
import torch

from ftray import data
from ftray.spec import load_spec
from tests.conftest import REPO, job_summary
from tests.figures import FIGURES

JOBS = sorted((REPO / "jobs").glob("*.yaml"))


def test_readme_jobs_table_lists_every_job():
    """README's jobs table has one row per file in jobs/, and no row for a job that does not exist."""
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| job | what | figure"):]
    rows = re.findall(r"^\| `(jobs/[^`]+)` \|", table.split("\n\n")[0], re.M)
    assert sorted(rows) == sorted(f"jobs/{p.name}" for p in JOBS)


def test_jobs_write_distinct_run_folders():
    """Every job has its own run.name, so running them all into one storage_path (as README's
    commands do: `runs/`) never makes one job resume another's checkpoints."""
    names = [load_spec(p).run.name for p in JOBS]
    assert len(set(names)) == len(names), names
    # A job that starts from another job's run (transfer, distill, incremental, rl_transfer) names
    # a folder that job writes under the same storage_path.
    starts = {p.name: re.findall(r"^\s+\w+: runs/(\w+)\s*$", p.read_text(), re.M) for p in JOBS}
    assert sum(map(len, starts.values())) >= 4 and all(set(s) <= set(names) for s in starts.values()), starts


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.stem)
def test_job_validates_and_documents_its_command(job):
    spec = load_spec(job)
    header = job.read_text().split("\nmodel:")[0]
    command = "sweep" if spec.tune else "run"
    assert f"ftray {command} jobs/{job.name}" in header, "the header comment names the command"
    assert "--set scaling.use_gpu=true" in header, "the header gives the GPU-cluster overrides"


def test_quickstart(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # job files name their data relative to the repository root
    s = job_summary(capsys, "run", "quickstart.yaml", tmp_path)
    assert s["status"] == "succeeded" and s["epochs_done"] == 5
    FIGURES["quickstart.val_accuracy"].check(s["metrics"]["val_accuracy"])



# The jobs above marked slow run as shipped and check README's figures (`pytest -m slow`); the
# default run keeps each of them end to end on a small budget here.
def test_pretrain_then_transfer_short(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    pre = job_summary(capsys, "run", "pretrain_digits.yaml", tmp_path, "--set", "train.epochs=3")
    assert pre["metrics"]["val_accuracy"] > 0.9
    s = job_summary(capsys, "run", "transfer.yaml", tmp_path, "--set", "train.epochs=4",
                    "--set", f"model.init_from={tmp_path}/pretrain_digits")
    assert s["data"]["classes"] == [5, 6, 7, 8, 9]
    assert s["params"]["trainable"] == 512 * 5 + 5  # only the new head
    assert s["metrics"]["val_accuracy"] > 0.8


def test_text_classifier_then_distill_short(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    teacher = job_summary(capsys, "run", "text_classifier.yaml", tmp_path, "--set", "train.epochs=1")
    assert teacher["metrics"]["val_accuracy"] > 0.45  # well above the validation majority class (28.1%)
    s = job_summary(capsys, "run", "distill.yaml", tmp_path, "--set", "train.epochs=1",
                    "--set", f"method.teacher={tmp_path}/text_classifier")
    assert s["teacher"]["params"] == {"total": teacher["params"]["total"], "trainable": 0}  # frozen
    assert set(s["teacher"]["metrics"]) == {"val_loss", "val_accuracy"}
    assert s["params"]["total"] < 0.4 * teacher["params"]["total"]


def test_llm_sft_then_dpo_short(ray_session, tmp_path, capsys, monkeypatch):
    """jobs/llm_sft.yaml for 2 epochs, then jobs/dpo.yaml from its model for 1 epoch on one worker
    (the shipped budgets and figures are test_llm_sft's and test_llm_sft_then_dpo's). jobs/grpo.yaml
    from the same start is test_llm_sft_then_grpo's (slow: a GRPO epoch generates on the CPU for
    ~100 s); GRPO end to end on a tiny decoder is tests/methods/test_grpo.py's."""
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", "llm_sft.yaml", tmp_path, "--set", "train.epochs=2")
    ppl = [m["val_perplexity"] for m in s["history"]]
    assert ppl[1] < ppl[0]
    d = job_summary(capsys, "run", "dpo.yaml", tmp_path, "--set", "train.epochs=1", "--set", "scaling.num_workers=1",
                    "--set", f"model.init_from={tmp_path}/llm_sft")
    assert set(d["start"]) == set(d["metrics"]) and "val_logprob_preference" in d["metrics"]
    assert d["start"]["val_preference_accuracy"] == 0.0  # the policy is the reference: every reward is 0
    assert d["metrics"]["val_preference_accuracy"] > 0.5 and d["metrics"]["val_loss"] < d["start"]["val_loss"]


def untrained_perplexity(job: str) -> float:
    """Validation perplexity of the job's model before any training (a fresh random decoder)."""
    import math

    import torch

    from ftray.methods.base import task_loss
    from ftray.models import build_model
    spec = load_spec(REPO / "jobs" / job)
    plan = data.inspect(spec)
    rows = data.row_transform(spec, plan)(data.validation_table(spec, plan))
    torch.manual_seed(spec.run.seed)
    model, total, tokens = build_model(spec, plan.info).eval(), 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows["input_ids"]), 4):  # a few rows at a time: logits span the vocabulary
            batch = {k: torch.from_numpy(v[i:i + 4]) for k, v in rows.items()}
            total += task_loss("causal_lm", model(batch), batch, reduction="sum").item()
            tokens += int((batch["labels"][:, 1:] != -100).sum())
    return math.exp(total / tokens)


def test_chat_sft_short(ray_session, tmp_path, capsys, monkeypatch):
    """Multi-turn chats, packed, loss on assistant turns: validation perplexity falls far below the
    untrained model's (about the vocabulary size), and the export renders chats with the template
    it was tuned with."""
    from transformers import AutoTokenizer

    from ftray.chat import CHATML
    monkeypatch.chdir(REPO)
    # One worker: the two-worker job is the slow test's (and DDP has its own tests).
    # One epoch (perplexity falling epoch on epoch is the slow full-size test's).
    s = job_summary(capsys, "run", "chat_sft.yaml", tmp_path, "--set", "train.epochs=1", "--set", "scaling.num_workers=1")
    [ppl] = [m["val_perplexity"] for m in s["history"]]
    untrained = untrained_perplexity("chat_sft.yaml")
    FIGURES["chat_sft.untrained"].check(untrained)
    assert ppl == ppl and ppl < untrained / 20  # ppl == ppl: not NaN
    assert AutoTokenizer.from_pretrained(tmp_path / "chat_sft" / "model").chat_template == CHATML


def test_qlora_short(ray_session, tmp_path, capsys, monkeypatch):
    """jobs/qlora.yaml for 2 epochs on one worker (the job's 2 DDP workers are the slow test's;
    NF4 under DDP: tests/models/test_quantize.py): adapters train on a 4-bit base, the perplexity
    falls, and the run's model/ is a merged bf16 model that plain transformers loads."""
    from transformers import AutoModelForCausalLM
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", "qlora.yaml", tmp_path, "--set", "train.epochs=2", "--set", "scaling.num_workers=1")
    ppl = [m["val_perplexity"] for m in s["history"]]
    assert ppl[1] < ppl[0]
    assert 0 < s["params"]["trainable"] < 0.1 * s["params"]["total"]
    merged = AutoModelForCausalLM.from_pretrained(s["model"])
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    assert not any("lora" in n for n, _ in merged.named_parameters())


@pytest.mark.slow
def test_qlora_job(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", "qlora.yaml", tmp_path)
    FIGURES["qlora.ppl_epoch1"].check(s["history"][0]["val_perplexity"])
    FIGURES["qlora.ppl_final"].check(s["metrics"]["val_perplexity"])
    FIGURES["qlora.trainable_share"].check(s["params"]["trainable"] / s["params"]["total"])


@pytest.mark.parametrize("job, max_share", [("lora.yaml", 0.01), ("attention.yaml", 0.2)])
def test_parameter_efficient_jobs_short(ray_session, tmp_path, capsys, monkeypatch, job, max_share):
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", job, tmp_path, "--set", "train.epochs=1")
    assert 0 < s["params"]["trainable"] <= max_share * s["params"]["total"]
    assert s["metrics"]["val_accuracy"] > 0.45


@pytest.mark.slow
def test_pretrain_then_transfer(ray_session, tmp_path, capsys, monkeypatch):
    """The backbone pretrained on digits 0-4 carries over to 5-9 with only a new head trained."""
    monkeypatch.chdir(REPO)
    pre = job_summary(capsys, "run", "pretrain_digits.yaml", tmp_path)
    FIGURES["pretrain.val_accuracy"].check(pre["metrics"]["val_accuracy"])
    s = job_summary(capsys, "run", "transfer.yaml", tmp_path, "--set", f"model.init_from={tmp_path}/pretrain_digits")
    assert s["data"]["classes"] == [5, 6, 7, 8, 9]
    assert s["params"]["trainable"] == 512 * 5 + 5  # only the new head: 512 hidden units -> 5 classes
    FIGURES["transfer.trainable"].check(s["params"]["trainable"])
    FIGURES["transfer.total"].check(s["params"]["total"])
    FIGURES["transfer.trainable_share"].check(s["params"]["trainable"] / s["params"]["total"])
    FIGURES["transfer.val_accuracy"].check(s["metrics"]["val_accuracy"])


@pytest.mark.slow
def test_text_classifier_then_distill(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    teacher = job_summary(capsys, "run", "text_classifier.yaml", tmp_path)
    spec = load_spec(REPO / "jobs" / "text_classifier.yaml")
    val = data.validation_table(spec, data.inspect(spec)).column("label").to_pylist()
    FIGURES["text_classifier.majority"].check(max(val.count(c) for c in set(val)) / len(val))
    FIGURES["text_classifier.val_accuracy"].check(teacher["metrics"]["val_accuracy"])
    params = teacher["params"]
    FIGURES["text_classifier.trainable"].check(params["trainable"])
    FIGURES["text_classifier.total"].check(params["total"])
    FIGURES["text_classifier.trainable_share"].check(params["trainable"] / params["total"])
    # jobs/distill.yaml: that run teaches a 2-layer student (the summary's teacher is the run
    # above, evaluated on the distill job's own validation file).
    s = job_summary(capsys, "run", "distill.yaml", tmp_path, "--set", f"method.teacher={tmp_path}/text_classifier")
    assert s["teacher"]["params"] == {"total": teacher["params"]["total"], "trainable": 0}  # frozen
    FIGURES["distill.teacher"].check(s["teacher"]["metrics"]["val_accuracy"])
    FIGURES["distill.student"].check(s["metrics"]["val_accuracy"])
    FIGURES["distill.share"].check(s["params"]["total"] / teacher["params"]["total"])


@pytest.mark.slow
def test_llm_sft_then_dpo(ray_session, tmp_path, capsys, monkeypatch):
    """jobs/dpo.yaml as its header runs it: after jobs/llm_sft.yaml. The SFT model prefers the
    chosen answer of under 70% of held-out pairs (the data's design); DPO raises that share."""
    monkeypatch.chdir(REPO)
    job_summary(capsys, "run", "llm_sft.yaml", tmp_path)
    s = job_summary(capsys, "run", "dpo.yaml", tmp_path, "--set", f"model.init_from={tmp_path}/llm_sft")
    FIGURES["dpo.start_logprob_preference"].check(s["start"]["val_logprob_preference"])
    FIGURES["dpo.logprob_preference"].check(s["metrics"]["val_logprob_preference"])
    FIGURES["dpo.preference_accuracy"].check(s["metrics"]["val_preference_accuracy"])
    assert s["start"]["val_logprob_preference"] < 0.7
    assert s["metrics"]["val_logprob_preference"] >= 0.85 and s["metrics"]["val_preference_accuracy"] >= 0.9


@pytest.mark.slow
def test_llm_sft_then_grpo(ray_session, tmp_path, capsys, monkeypatch):
    """jobs/grpo.yaml as its header runs it: after jobs/llm_sft.yaml. The greedy held-out answers
    in the rewarded format rise by at least 0.20 (issue 19's target)."""
    monkeypatch.chdir(REPO)
    job_summary(capsys, "run", "llm_sft.yaml", tmp_path)
    s = job_summary(capsys, "run", "grpo.yaml", tmp_path, "--set", f"model.init_from={tmp_path}/llm_sft")
    FIGURES["grpo.start_reward"].check(s["start"]["val_reward"])
    FIGURES["grpo.val_reward"].check(s["metrics"]["val_reward"])
    assert set(s["start"]) == set(s["metrics"]) == {"val_loss", "val_reward", "val_answer_length"}
    assert all(0 <= m["train_reward"] <= 1 for m in s["history"])
    assert s["metrics"]["val_reward"] >= s["start"]["val_reward"] + 0.20


@pytest.mark.slow
def test_llm_sft_then_grpo_pbt(ray_session, tmp_path, capsys, monkeypatch):
    """jobs/grpo_pbt.yaml as its header runs it (after jobs/llm_sft.yaml), and the same spec's
    single run (`ftray run`, the tune section ignored): the sweep exploits after epochs 1 and 2, and
    its best trial ends above the single run (issue 19's target)."""
    monkeypatch.chdir(REPO)
    job_summary(capsys, "run", "llm_sft.yaml", tmp_path)
    start = f"model.init_from={tmp_path}/llm_sft"
    sweep = job_summary(capsys, "sweep", "grpo_pbt.yaml", tmp_path, "--set", start)
    single = job_summary(capsys, "run", "grpo_pbt.yaml", tmp_path, "--set", start,
                         "--set", "run.name=grpo_pbt_single")
    assert sweep["status"] == single["status"] == "succeeded" and sweep["trials"] == 2
    FIGURES["grpo_pbt.exploits"].check(sweep["pbt"]["exploits"])
    assert all(step["trial_id"] != step["copied_id"] for step in sweep["pbt"]["log"])
    FIGURES["grpo_pbt.start"].check(single["start"]["val_reward"])
    FIGURES["grpo_pbt.single"].check(single["metrics"]["val_reward"])
    FIGURES["grpo_pbt.best"].check(sweep["best"]["metrics"]["val_reward"])
    assert sweep["best"]["metrics"]["val_reward"] > single["metrics"]["val_reward"]


@pytest.mark.slow
def test_llm_sft(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", "llm_sft.yaml", tmp_path)
    ppl = [m["val_perplexity"] for m in s["history"]]
    assert len(ppl) == 6
    FIGURES["llm_sft.ppl_epoch1"].check(ppl[0])
    FIGURES["llm_sft.ppl_final"].check(ppl[-1])


@pytest.mark.slow
def test_chat_sft(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", "chat_sft.yaml", tmp_path)
    ppl = [m["val_perplexity"] for m in s["history"]]
    assert len(ppl) == 4 and ppl[-1] < ppl[0]
    FIGURES["chat_sft.ppl_epoch1"].check(ppl[0])
    FIGURES["chat_sft.ppl_final"].check(ppl[-1])


@pytest.mark.slow
def test_lora_job(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", "lora.yaml", tmp_path)
    FIGURES["lora.trainable_share"].check(s["params"]["trainable"] / s["params"]["total"])
    FIGURES["lora.val_accuracy"].check(s["metrics"]["val_accuracy"])


@pytest.mark.slow
def test_attention_job(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", "attention.yaml", tmp_path)
    FIGURES["attention.trainable_share"].check(s["params"]["trainable"] / s["params"]["total"])
    FIGURES["attention.val_accuracy"].check(s["metrics"]["val_accuracy"])


def test_sweep_job(ray_session, tmp_path, capsys, monkeypatch):
    """A short version of jobs/sweep.yaml (2 trials of 1 epoch): both trials finish, and the
    ensemble ranks the best trial first, whose exported model scores exactly what the trial reported."""
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "sweep", "sweep.yaml", tmp_path, "--set", "tune.num_samples=2", "--set", "train.epochs=1",
                    "--set", "tune.ensemble.top_k=2")
    assert (s["trials"], s["errors"], s["trial_epochs"]) == (2, 0, 2)
    ens = s["ensemble"]
    assert ens["members"][0] == s["best"]["trial_id"] and len(set(ens["members"])) == 2
    assert ens["member_metrics"][0]["val_accuracy"] == pytest.approx(s["best"]["metrics"]["val_accuracy"], abs=1e-6)
    assert ens["member_metrics"][0]["val_accuracy"] >= ens["member_metrics"][1]["val_accuracy"]


@pytest.mark.slow
def test_sweep_job_figures(ray_session, tmp_path, capsys, monkeypatch):
    """jobs/sweep.yaml as shipped (8 Optuna trials under ASHA, a top-3 ensemble): README's best
    trial and ensemble accuracy."""
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "sweep", "sweep.yaml", tmp_path)
    assert s["trials"] == 8 and len(s["ensemble"]["members"]) == 3
    FIGURES["sweep.best"].check(s["best"]["metrics"]["val_accuracy"])
    FIGURES["sweep.ensemble"].check(s["ensemble"]["metric"]["val_accuracy"])
