"""The registry of the measured figures: every number README.md states in its jobs table and
benchmarks/RESULTS.md in its "Jobs" section is listed here, with the text it appears in and what
backs it.

- `Figure`: a figure a test checks. `text` is the documents' text with the figure in braces
  ("val accuracy {94.1}% every time"); the value comes from that text (so the documents, registry
  and test cannot drift apart: `tests/test_readme.py` checks the text is in README.md or
  benchmarks/RESULTS.md), `scale` turns it
  into the unit of `summary.json` (0.01 for a percentage), `tol` is the tolerance in that unit,
  and `test` names the test that calls `FIGURES[key].check(...)`. The runs are deterministic, so
  an accuracy's tolerance is 0.006: two of 359 validation rows, under a point (the documents round
  to 0.1 points; a figure stated one point off fails).
- `Untested`: numbers measured once and not checked by a test (wall times on a shared machine,
  figures of another machine), each with the command that produced them.
- `Setting`: numbers in those parts of the documents that are not measurements (a date, seeds, a
  configuration repeated next to a figure).

`tests/test_readme.py` extracts every number of README's jobs table's figure column and of
RESULTS.md's "Jobs" section (outside `code`) and fails on one that no entry's text covers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?")
BRACED = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True)
class Figure:
    key: str
    text: str  # the documents' text, the figure in braces; more texts for the same figure in `also`
    tol: float
    test: str  # "tests/FILE.py::test_name"; a slow test is still a test
    scale: float = 0.01
    also: tuple[str, ...] = ()

    @property
    def shown(self) -> str:
        (number,) = BRACED.findall(self.text)
        return number

    @property
    def value(self) -> float:
        return float(self.shown.replace(",", "")) * self.scale

    def readme_texts(self) -> tuple[str, ...]:
        return tuple(BRACED.sub(r"\1", t) for t in (self.text, *self.also))

    def check(self, measured: float) -> None:
        """Fail unless `measured` (the summary's value) is within `tol` of the documented figure."""
        assert abs(measured - self.value) <= self.tol + 1e-9, (
            f"{self.key}: measured {measured:.4g}, the docs state {self.shown} "
            f"({self.value:.4g} +- {self.tol:g}) in {self.text!r}")


@dataclass(frozen=True)
class Untested:
    key: str
    texts: tuple[str, ...]
    why: str  # "measured once, not tested: COMMAND ..."

    def readme_texts(self) -> tuple[str, ...]:
        return self.texts


@dataclass(frozen=True)
class Setting:
    key: str
    texts: tuple[str, ...]
    why: str

    def readme_texts(self) -> tuple[str, ...]:
        return self.texts


JOBS = "tests/test_jobs.py"
TC_DISTILL = f"{JOBS}::test_text_classifier_then_distill"
MULTIMODAL = "tests/models/test_multimodal.py"
MM_JOB = f"{MULTIMODAL}::test_multimodal_job_beats_each_single_modality"
# Owned by others: the tests named here are to import these entries (see PENDING).
PBT = "tests/test_sweep_pbt.py"
ENSEMBLE_JOB = f"{PBT}::test_ensemble_job_stacks_past_its_best_member"
PBT_JOB = f"{PBT}::test_pbt_job_as_shipped"
INCREMENTAL_JOB = "tests/methods/test_incremental.py::test_incremental_job_figures"
META_JOB = "tests/methods/test_meta.py::test_meta_job_figures"
RL_JOB = "tests/test_rl.py::test_job_rl_finetune_then_rl_transfer"

WALL = "measured once on the shared 2-core machine (wall time, not tested: load changes it 3-10x)"

ENTRIES = [
    # ----------------------------------------------------------------------------- quickstart
    Figure("quickstart.val_accuracy", "val accuracy {94.1}% every time", 0.006, f"{JOBS}::test_quickstart",
           also=("| {94.1}% val accuracy |",)),
    Untested("quickstart.wall", ("38.9, 40.6, 41.5 s (median **40.6 s**; Ray start 3.5 s, fit\n  35 s)",),
             f"{WALL}: `ftray run jobs/quickstart.yaml --set run.storage_path=/tmp/qs`, three runs"),
    Setting("measured.machine", ("Wall times on the 2-core CPU machine",), "the machine"),
    # ---------------------------------------------------------------------- pretrain, transfer
    Figure("pretrain.val_accuracy", "| {97.8}% val accuracy |", 0.006, f"{JOBS}::test_pretrain_then_transfer",
           also=("`: {97.8}%, then",)),
    Figure("transfer.val_accuracy", "| {98.9}% val accuracy, 7.2% of parameters", 0.006,
           f"{JOBS}::test_pretrain_then_transfer", also=("**{98.9}%** on\n  digits",)),
    Figure("transfer.trainable_share", "val accuracy, {7.2}% of parameters trainable", 0.0005,
           f"{JOBS}::test_pretrain_then_transfer", also=("35,845 parameters trainable, {7.2}%)",)),
    Figure("transfer.trainable", "({2,565} of 35,845", 0, f"{JOBS}::test_pretrain_then_transfer", scale=1),
    Figure("transfer.total", "of {35,845} parameters", 0, f"{JOBS}::test_pretrain_then_transfer", scale=1),
    Setting("transfer.classes", ("digits 5-9 with",), "the job's classes"),
    # ------------------------------------------------------------------------ text classifier
    Figure("text_classifier.val_accuracy", "| {100}% val accuracy (majority class", 0.006,
           TC_DISTILL,
           also=("`ftray run jobs/text_classifier.yaml`: **{100}%** validation",)),
    Figure("text_classifier.majority", "(majority class {28.1}%)", 0.005, TC_DISTILL,
           also=("against a {28.1}% majority class",)),
    Figure("text_classifier.trainable_share", "majority class 28.1%), {15.6}% trainable", 0.0005,
           TC_DISTILL, also=("22.7M parameters trainable, {15.6}%)",)),
    Figure("text_classifier.trainable", "({3.55}M of", 0.005e6, TC_DISTILL,
           scale=1e6),
    Figure("text_classifier.total", "M of {22.7}M parameters trainable", 0.05e6,
           TC_DISTILL, scale=1e6),
    Untested("text_classifier.wall", ("15.6%), 60 s.",), f"{WALL}: `ftray run jobs/text_classifier.yaml`"),
    # ---------------------------------------------------------------------------------- SFT
    Figure("llm_sft.ppl_epoch1", "val perplexity {156} after epoch 1", 3, f"{JOBS}::test_llm_sft", scale=1,
           also=("response tokens {156} →",)),
    Figure("llm_sft.ppl_final", "{1.91} after epoch 6", 0.05, f"{JOBS}::test_llm_sft", scale=1,
           also=("→ {1.91} in 6 epochs",)),
    Setting("llm_sft.epochs", ("after epoch 1,", "after epoch 6"), "the epochs the figures are of"),
    Untested("llm_sft.wall", ("in 6 epochs, 60 s.",), f"{WALL}: `ftray run jobs/llm_sft.yaml`"),
    # ----------------------------------------------------------------- DPO (after llm_sft)
    Figure("dpo.start_logprob_preference", "the chosen answer of {45.0}% of held-out pairs before", 0.007,
           f"{JOBS}::test_llm_sft_then_dpo", also=("log-prob) of {45.0}% of the 160 held-out pairs",)),
    Figure("dpo.logprob_preference", "held-out pairs before, {100}% after", 0.007, f"{JOBS}::test_llm_sft_then_dpo",
           also=("the DPO model of {100}%.",)),
    Figure("dpo.preference_accuracy", "preference accuracy (implicit reward) {100}%", 0.007,
           f"{JOBS}::test_llm_sft_then_dpo"),
    Setting("dpo.val_rows", ("of the 160 held-out pairs",), "the validation rows (20% of 800 pairs)"),
    Untested("jobs.quiet_rerun", ("Again on 2026-12-03 (one run each, quiet machine, load average 2-4): `llm_sft` 98 s, `dpo` 119 s,",
                                 "`val_logprob_preference` 0.450 → 1.000 and `val_preference_accuracy` 1.000; `ftray sweep",
                                 "jobs/grpo_pbt.yaml` 104 s (best trial `val_reward` 1.000, 2 exploit steps; the spec's single run",
                                 "0.567 → 0.667 in 90 s)."),
             f"{WALL}: a rerun of `ftray run jobs/llm_sft.yaml`, `jobs/dpo.yaml` and `ftray sweep jobs/grpo_pbt.yaml`; "
             "the metrics are the ones test_llm_sft_then_dpo and test_llm_sft_then_grpo_pbt check"),
    Untested("dpo.wall", ("90 s and 113 s;", "(2026-12-02, one run each, on a quiet"), f"{WALL}: `ftray run jobs/llm_sft.yaml && ftray run jobs/dpo.yaml`"),
    # ----------------------------------------------------------------- GRPO (after llm_sft)
    Figure("grpo.start_reward", "in the rewarded format: {45.0}% before", 0.013, f"{JOBS}::test_llm_sft_then_grpo"),
    Figure("grpo.val_reward", "format: 45.0% before, {100}% after", 0.013, f"{JOBS}::test_llm_sft_then_grpo"),
    Setting("grpo.format", ("(a sentence of 2+ words ending with a full stop, 60% of prompts word reversals)",),
            "the reward's rule and the data's design"),
    Untested("grpo.seeds", ("(2026-12-02, one run per seed with `--set run.seed=N`)",
                            "0.450 → 1.000 (seed 0), 0.388 → 0.988 (seed 1), 0.425 → 1.000 (seed 2)"),
             "measured once per seed, not tested (seed 0's are test_llm_sft_then_grpo's figures): `ftray run "
             "jobs/grpo.yaml --set run.seed=N --set run.name=grpo_sN` after `ftray run jobs/llm_sft.yaml`"),
    Untested("grpo.wall", ("204 s (seed 2, load average falling from about 20 to 5), 8 to 11 minutes at a load of 40 to 60",),
             f"{WALL}: `ftray run jobs/grpo.yaml`"),
    # ----------------------------------------------------- GRPO PBT (after llm_sft; 30 held-out prompts)
    Figure("grpo_pbt.exploits", "| {2} exploit steps; best trial", 0, f"{JOBS}::test_llm_sft_then_grpo_pbt", scale=1),
    Figure("grpo_pbt.best", "best trial's greedy held-out answers {100}% in the format", 0.034,
           f"{JOBS}::test_llm_sft_then_grpo_pbt"),
    Figure("grpo_pbt.single", "against {66.7}% for the same spec's single run", 0.034,
           f"{JOBS}::test_llm_sft_then_grpo_pbt"),
    Figure("grpo_pbt.start", "single run (start {56.7}%)", 0.034, f"{JOBS}::test_llm_sft_then_grpo_pbt"),
    # ----------------------------------------------------------------------------- chat SFT
    Figure("chat_sft.untrained", "val perplexity {31071} untrained", 50, f"{JOBS}::test_chat_sft_short", scale=1,
           also=("({31071} before training",)),
    Figure("chat_sft.ppl_epoch1", "untrained, {9.20} after epoch 1", 0.3, f"{JOBS}::test_chat_sft", scale=1,
           also=("assistant tokens {9.20} →",)),
    Figure("chat_sft.ppl_final", "{1.93} after epoch 4", 0.05, f"{JOBS}::test_chat_sft", scale=1,
           also=("→ {1.93} in 4 epochs",)),
    Setting("chat_sft.epochs", ("after epoch 4", "in 4 epochs"), "the epochs the figures are of"),
    Setting("chat_sft.vocabulary", ("among the 30522 tokens",), "the tokenizer's vocabulary size"),
    # ---------------------------------------------------------------------------------- QLoRA
    Figure("qlora.ppl_epoch1", "val perplexity {19456} after epoch 1", 200, f"{JOBS}::test_qlora_job", scale=1),
    Figure("qlora.ppl_final", "{15851} after epoch 4", 150, f"{JOBS}::test_qlora_job", scale=1),
    Figure("qlora.trainable_share", "the 4-bit path is the point), {0.86}% trainable", 0.00005,
           f"{JOBS}::test_qlora_job"),
    Setting("qlora.bits", ("its frozen base in 4-bit NF4", "the 4-bit path is the point"), "NF4's 4 bits a weight"),
    Setting("qlora.epochs", ("19456 after epoch 1,", "15851 after epoch 4"), "the epochs the figures are of"),
    # -------------------------------------------------------------------------- LoRA, attention
    Figure("lora.val_accuracy", "LoRA r=8 on MiniLM's attention projections + new head | {100}% val accuracy", 0.006,
           f"{JOBS}::test_lora_job", also=("`ftray run jobs/lora.yaml`: {100}% with",)),
    Figure("lora.trainable_share", "val accuracy, {0.65}% trainable", 0.00005, f"{JOBS}::test_lora_job",
           also=("with {0.65}% of the parameters trainable",)),
    Untested("lora.wall", ("trainable, 46 s.",), f"{WALL}: `ftray run jobs/lora.yaml`"),
    Figure("attention.val_accuracy", "(+ head) train | {100}% val accuracy", 0.006, f"{JOBS}::test_attention_job",
           also=("`ftray run jobs/attention.yaml`: {100}% with",)),
    Figure("attention.trainable_share", "train | 100% val accuracy, {15.6}% trainable", 0.0005,
           f"{JOBS}::test_attention_job", also=("projections only ({15.6}%)",)),
    Untested("attention.wall", ("only (15.6%), 55 s.",), f"{WALL}: `ftray run jobs/attention.yaml`"),
]

ENTRIES += [
    # -------------------------------------------------------------------------------- sweep
    Setting("sweep.session", ("(measured 2026-11-22)", "(Ray Train trials, 2 at a time)",
                              "(grace 1, reduction factor 4)"), "when it was measured; the job's settings"),
    Untested("sweep.row", ("| 8 trials in 148 s; ASHA stopped 7 of 8 early (19 of 48 trial-epochs run);",),
             "the jobs-table summary of the Measured line below (same figures)"),
    Untested("sweep.trials", ("8 Optuna trials", "in 148 s",
                              "ASHA stopped **7 of 8** early (5 after 1 epoch, 2 after 4; 19 of 48 trial-epochs run)"),
             "measured once, not tested: `ftray sweep jobs/sweep.yaml`; which trials ASHA stops depends on "
             "the order their results arrive (2 trials at a time on a shared machine)"),
    Figure("sweep.best", "best trial {95.3}% validation accuracy", 0.006, f"{JOBS}::test_sweep_job_figures",
           also=("best trial {95.3}%; top-3",)),
    Untested("sweep.members", ("the top 3 (95.3, 92.2, 90.3%)",), "measured once with the ensemble below"),
    Setting("sweep.top_k", ("top-3 average",), "the job's tune.ensemble.top_k"),
    Figure("sweep.ensemble", "90.3%) **{96.1}%**", 0.006, f"{JOBS}::test_sweep_job_figures",
           also=("top-3 average ensemble {96.1}%",)),
    # ---------------------------------------------------- ensemble, PBT (the lead: tests/test_sweep_pbt.py)
    Untested("ensemble.wall", ("| 38 s; stacked", "8 packed trials in 38 s"), WALL),
    Figure("ensemble.stacked", "stacked ensemble {96.4}% against", 0.006, ENSEMBLE_JOB,
           also=("validation rows): **{96.4}%**",)),
    Figure("ensemble.best_member", "the best single member {95.8}%", 0.006, ENSEMBLE_JOB,
           also=("the best single member's **{95.8}%**",)),
    Figure("ensemble.averaged", "(averaged: {95.5}%)", 0.006, ENSEMBLE_JOB,
           also=("`--set tune.ensemble.combine=average`: {95.5}%",)),
    Figure("ensemble.voted", "`vote` {95.0}%", 0.006, ENSEMBLE_JOB),
    *(Figure(f"ensemble.member{i + 1}", "Members (top 5): " + ", ".join(
        f"{{{m}}}" if j == i else m for j, m in enumerate(("95.8", "95.0", "93.9", "89.4", "88.9"))) + "%.",
        0.006, ENSEMBLE_JOB) for i in range(5)),
    Setting("ensemble.top_k", ("Members (top 5):",), "the job's tune.ensemble.top_k"),
    Untested("ensemble.others", ("on the 359 validation rows", "(+2 rows)", "=3` 95.3%", "the two weakest (89%)"),
             "measured once, not tested: `ftray sweep jobs/ensemble.yaml` and the `--set` variants named"),
    Untested("pbt.wall", ("| 150-253 s (5 runs); 3 exploit", "in 150, 199, 180, 210, 253 s (median 199 s)",
                          "(2026-12-01, 5 runs, with other tests running beside them: load 4-13)"), WALL),
    Figure("pbt.exploits", "(5 runs); {3} exploit steps", 0, PBT_JOB, scale=1,
           also=("PBT took **{3} exploit\n  steps** every run",)),
    Setting("pbt.epochs", ("(one at each of epochs 2, 4 and 6;", "so none at 8;", "4 packed trials, 8 epochs,"),
            "the job's perturbation_interval and epochs"),
    Figure("pbt.best", "exploit steps; best {96.7}%", 0.006, PBT_JOB,
           also=("the best trial ended at {96.7}% validation accuracy every run",)),
    Untested("pbt.best_trial", ("(val loss\n  0.100), with its own sampled LR 0.207 and momentum 0.78",),
             "measured in the same 5 runs, not tested: `ftray sweep jobs/pbt.yaml`"),
    # ----------------------------------------------------------------- ASHA benchmark (benchmarks/)
    Untested("asha_vs_grid", ("the 16-point grid, 9 epochs, packed trials 2 at a time: full grid 144 trial-epochs "
                              "in 80 s, best 97.8%; ASHA (grace 1, reduction factor 3) 114 trial-epochs (79%) in "
                              "76 s, stopped 4 of 16, best 97.8%",),
             "measured once, not tested: `python benchmarks/asha_vs_grid.py --storage /tmp/asha`"),
    # ----------------------------- distill (its job runs after the text classifier's, tests/test_jobs.py)
    Figure("distill.student", "| student {100}% val accuracy (teacher", 0.006, TC_DISTILL),
    Figure("distill.teacher", "(teacher {100}%) with", 0.006, TC_DISTILL,
           also=("teacher {100}%; the student",)),
    Figure("distill.share", "with {18.5}% of the teacher's parameters", 0.0005, TC_DISTILL,
           also=("the student has 4.20M parameters, {18.5}% of",)),
    Untested("distill.seeds", ("without the teacher 99.5 / 93.5 / 94.0% (seeds 0 / 1 / 2; distilled: 100% on each)",
                               "seeds 0, 1, 2", "distilled student 100 / 100 / 100%, student alone 99.5 / 93.5 / 94.0%",
                               "the student has 4.20M parameters", "of the teacher's 22.7M"),
             "measured once, not tested: `ftray run jobs/distill.yaml` with and without the teacher, "
             "`--set run.seed=0/1/2` (six runs)"),
    Untested("incremental_meta.wall", ("`): 53 s;", "`: 74 s (figures"), WALL),
    # ------------------------------------------------------------------- RL (tests/test_rl.py)
    Setting("rl.machine", ("| (2-core CPU, seed 0) the", "| (16-core CPU) starts"), "the machine the RL rows ran on"),
    # Not checkable here: a 20-minute run on a loaded machine, and behaviour cloning's data order is not
    # fixed by run.seed. tests/test_rl.py checks each start against its own checkpoint instead, and
    # tests/test_rl_target.py that PPO reaches method.stop.target_return from a weak start.
    Untested("rl_finetune.demonstrator", ("imperfect CartPole heuristic (return 289)",),
             "`python jobs/data/make_weak_demos.py` prints it (deterministic: a fixed heuristic, seeds 0-19)"),
    Untested("rl_finetune.start", ("the clone starts at 311; PPO peaks at 368 and ends at 351 after 60000 env steps",),
             "measured once on the 2-core machine under load: `python benchmarks/rl_protections.py --storage "
             "/tmp/rl_local --seeds 0 --variants plain --set method.stop.env_steps=60000`"),
    Untested("rl_transfer.start", ("starts at 419 on the variant; PPO",),
             "measured once on the 16-core host: `ftray run jobs/rl_transfer.yaml` (its start depends on the BC run)"),
    Untested("rl_transfer.ppo", ("PPO did not reach 475 in 100000 steps (scratch: 50000)",),
             "measured once on the 16-core host: `ftray run jobs/rl_transfer.yaml` (100000 env steps)"),
    Untested("rl_continuous.run", ("(2-core CPU, loaded, seed 0) from -1315 to the target -300 in 3000 env steps; "
                                   "final -214 over 20 episodes; 459 s, over the 6-minute aim",),
             "measured once (and once more under heavier load, docs/rl.md), not tested: SAC is not deterministic "
             "across runs; `ftray run jobs/rl_continuous.yaml` (tests/test_rl_continuous.py's slow test checks "
             "that the target is reached)"),
    # ------------------------------------------------------------------------------ multimodal
    Figure("multimodal.fused", "| fused {94.4}% val accuracy", 0.006, MM_JOB,
           also=("fused **{94.4}%** validation accuracy",)),
    Figure("multimodal.params", "({64,706} parameters)", 0, MM_JOB, scale=1),
    Figure("multimodal.image_only", "with only the image {50.0}%", 0.006,
           f"{MULTIMODAL}::test_multimodal_job_ablation_figures",
           also=("image only **{50.0}%**",)),
    Figure("multimodal.text_only", "only the question {50.1}% (chance", 0.006,
           f"{MULTIMODAL}::test_multimodal_job_ablation_figures", also=("question only **{50.1}%**",)),
    Setting("multimodal.chance", ("(chance 50%)", "chance is 50% by construction"),
            "a property of the data (jobs/data/make_data.py balances the answers)"),
    Untested("multimodal.wall", ("The fused job took 96.5 s wall (Ray start 5 s, fit 85 s, 4-10 s per epoch) on the "
                                 "shared 2-core machine at load average 12", "the same run took 651 s at load 60-95",
                                 "two fresh runs on 2026-12-01 (264 and 286 s at load 40-80) both gave 94.4% "
                                 "(val loss 0.1413)"),
             WALL),
    # ---------------------------------------------------- incremental (tests/methods/test_incremental.py)
    Figure("incremental.old_before", "| old digits {97.8}% ->", 0.006, INCREMENTAL_JOB,
           also=("without replay and EWC: old {97.8}% ->",)),
    Figure("incremental.old_after", "-> {95.6}% (forgetting 2.2", 0.006, INCREMENTAL_JOB),
    Figure("incremental.forgetting", "(forgetting {2.2} points)", 0.006, INCREMENTAL_JOB),
    Figure("incremental.new_after", "new digits {93.9}%;", 0.006, INCREMENTAL_JOB),
    Figure("incremental.plain_old_after", "without replay and EWC: old 97.8% -> {0.0}%", 0.006,
           INCREMENTAL_JOB),
    Figure("incremental.plain_forgetting", "(forgetting {97.8}), new", 0.006, INCREMENTAL_JOB),
    Figure("incremental.plain_new_after", "97.8), new {98.9}% |", 0.006, INCREMENTAL_JOB),
    # ----------------------------------------------------------------- meta (tests/methods/test_meta.py)
    Setting("meta.shots", ("| 10-shot MSE after 5 steps:",), "the job's shots and eval_steps"),
    Figure("meta.meta_mse", "meta-learned start {0.94}, jointly", 0.05, META_JOB, scale=1),
    Figure("meta.baseline_mse", "jointly trained baseline {3.30} |", 0.1, META_JOB, scale=1),
]

FIGURES = {e.key: e for e in ENTRIES if isinstance(e, Figure)}

# Figures whose tests do not check them yet: `tests/test_readme.py` marks each one xfail (strict,
# so wiring one up without removing it here fails too). None today.
PENDING: set[str] = set()
