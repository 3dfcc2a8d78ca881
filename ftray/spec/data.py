"""`data:`: the training and validation data, its columns and its task."""

from __future__ import annotations

from typing import Literal

from ftray.schema import Strict, describe

class DataSpec(Strict):
    path: str = describe(
        "Training data: a Parquet, JSONL or CSV file or folder (local path or URI), a folder that Hugging "
        "Face `datasets` wrote with `save_to_disk`, or a Hub dataset id (`owner/name`).")
    val_path: str | None = describe("Validation data in the same layout; None splits `path` (or takes "
                                    "its `val_split`).", None)
    split: str = describe("Split of a Hugging Face dataset (a DatasetDict or Hub id) to train on.", "train")
    val_split: str | None = describe(
        "Split of a Hugging Face dataset to validate on: of `val_path` if given, else of `path` (None: "
        "`val_path`'s `split`, or a `val_fraction` split).", None)
    val_fraction: float = describe("Share of `path` held out for validation when neither `val_path` nor "
                                   "`val_split` is given.", 0.2, gt=0.0, lt=1.0)
    format: Literal["auto", "parquet", "jsonl", "csv"] = describe(
        "File format; `auto` goes by the file extension.", "auto")
    task: Literal["classification", "regression", "causal_lm"] = describe(
        "What the labels are: class ids, real targets, or next tokens of `text`.", "classification")
    features: list[str] = describe(
        "Numeric input columns for `mlp` and the `multimodal` tabular encoder (one list-valued column or "
        "several scalar columns).",
        default_factory=list)
    text: str | None = describe("Text column for `hf` models (and the `multimodal` text encoder).", None)
    image: str | None = describe(
        "`multimodal`: image column, one fixed-shape numeric array per row (HxW or CxHxW nested lists).", None)
    prompt: str | None = describe("`causal_lm` instruction tuning: prompt column (no loss on its tokens).", None)
    response: str | None = describe("`causal_lm` instruction tuning: response column (the loss).", None)
    chosen: str | None = describe(
        "`dpo`, `simpo`: column of the preferred answer to `prompt` (or to the `messages` turns).", None)
    rejected: str | None = describe("`dpo`, `simpo`: column of the dispreferred answer.", None)
    answer: str | None = describe(
        "`grpo`: column of the expected answer to each prompt, which the reward checks (None: the reward "
        "reads the generated answer alone).", None)
    messages: str | None = describe(
        "`causal_lm` chat tuning: column whose rows are lists of {role, content} turns (system, user, "
        "assistant, tool), rendered by the chat template.", None)
    chat_template: Literal["tokenizer", "chatml"] = describe(
        "`data.messages`: the tokenizer's own chat template, or a built-in one that overrides it.", "tokenizer")
    train_on: Literal["assistant", "last_assistant", "all"] = describe(
        "`data.messages`: which tokens carry the loss: every assistant turn, the last one, or the whole "
        "rendered chat.", "assistant")
    truncation: Literal["none", "right", "left"] = describe(
        "Examples longer than `model.max_length`: error (`none`), cut the end (`right`), or cut the "
        "start of the prompt (`left`); chats drop whole trailing (`right`) or leading (`left`, after the "
        "system prompt) turns first.", "right")
    packing: bool = describe(
        "`causal_lm`: put several whole examples in each `model.max_length` row, kept apart (positions "
        "restart at each example, no attention or loss across examples).", False)
    label: str | None = describe("Label column (classification, regression).", "label")
    classes: list[str | int] | None = describe(
        "Label values in head order; None means integer labels 0..K-1 with K inferred.", None)
    normalize: Literal["none", "standard", "minmax"] = describe(
        "`mlp` features: scale each value to mean 0 and std 1 (`standard`) or to 0..1 (`minmax`), fitted on "
        "the training rows only (after the validation split) and kept with the model, which applies it to "
        "every later input (predict, eval, `ftray.load`); `none` feeds them as they are.", "none")
    shuffle_buffer: int = describe("Rows in each worker's seeded shuffle buffer (0 = no shuffle).",
                                   1024, ge=0)


# The validation metric each task reports beside `val_loss` (what tune.metric and early stopping
# may name).
TASK_METRICS = {"classification": "val_accuracy", "regression": "val_mse", "causal_lm": "val_perplexity"}
