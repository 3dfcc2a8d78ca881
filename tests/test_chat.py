"""Chat rows (`data.messages`, `ftray.chat`): the label mask against the rendered template token by
token, `train_on`, truncation by whole turns, and templates that cannot be used.

The chats are a literal JSONL file as someone else would write it (a system prompt, several
exchanges, a tool turn with an extra key, non-ASCII text); the expected masks are computed here
independently of `ftray.chat`: from a hand-written ChatML rendering and the character offsets of
the assistant replies in it, and from transformers' own `{% generation %}` assistant mask on a
tokenizer built here with a template of another shape.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest

from ftray import chat, data
from ftray.spec import JobSpec, SpecError
from tests.conftest import minilm_path

CHATS_JSONL = """\
{"messages": [{"role": "system", "content": "You answer questions about the weather, briefly."}, {"role": "user", "content": "Is it raining in Bergen?"}, {"role": "assistant", "content": "Let me look that up."}, {"role": "tool", "content": "bergen: rain, 9 C", "name": "weather"}, {"role": "assistant", "content": "Yes: rain and 9 degrees."}, {"role": "user", "content": "Should I bring an umbrella?"}, {"role": "assistant", "content": "Yes, bring one."}]}
{"messages": [{"role": "system", "content": "Reply in one word."}, {"role": "user", "content": "Colour of the sky?"}, {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "And at night?"}, {"role": "assistant", "content": "Black."}]}
{"messages": [{"role": "system", "content": "Be friendly."}, {"role": "user", "content": "Café or tea?"}, {"role": "assistant", "content": "Tea, with honey."}, {"role": "user", "content": "Why honey?"}, {"role": "assistant", "content": "It is sweet and kind to the throat."}, {"role": "user", "content": "Thanks!"}]}
"""

# Row 1 of CHATS_JSONL as ChatML renders it, written out by hand.
ROW1_CHATML = ("<|im_start|>system\nReply in one word.<|im_end|>\n"
               "<|im_start|>user\nColour of the sky?<|im_end|>\n"
               "<|im_start|>assistant\nBlue.<|im_end|>\n"
               "<|im_start|>user\nAnd at night?<|im_end|>\n"
               "<|im_start|>assistant\nBlack.<|im_end|>\n")

# A Zephyr-shaped template whose assistant replies are marked for transformers' own assistant mask.
ZEPHYR = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' }}{% if m['role'] == 'assistant' %}"
          "{% generation %}{{ m['content'] + eos_token + '\\n' }}{% endgeneration %}{% else %}"
          "{{ m['content'] + eos_token + '\\n' }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


def rows() -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in CHATS_JSONL.splitlines()]


@pytest.fixture(scope="module")
def zephyr_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer trained here on the chats, with its own (Zephyr-shaped) template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    specials = ["<pad>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    texts = [t["content"] for r in rows() for t in r] * 20
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>")
    tok.chat_template = ZEPHYR
    out = tmp_path_factory.mktemp("zephyr_tok")
    tok.save_pretrained(out)
    return out


def chat_spec(tmp_path, tok_dir, max_length: int = 256, **data_fields) -> JobSpec:
    path = tmp_path / "chats.jsonl"
    if not path.exists():
        path.write_text(CHATS_JSONL)
    return JobSpec.model_validate({
        "model": {"name": "hf", "path": str(tok_dir), "max_length": max_length},
        "data": {"path": str(path), "task": "causal_lm", "messages": "messages", "label": None,
                 "val_fraction": 0.34, **data_fields},
        "run": {"name": "t", "storage_path": str(tmp_path / "runs")}})


def tokenizer(tok_dir):
    from ftray.models.hf import load_tokenizer
    return load_tokenizer(str(tok_dir))


def unpacked(spec: JobSpec, tok_dir) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each row of the spec's file, through inspect and the Ray Data UDF."""
    plan = data.inspect(spec)
    out = data.TokenizedRows(spec, {}, str(tok_dir))(plan.train_table)
    return [(ids[m == 1].tolist(), lab[m == 1].tolist())
            for ids, lab, m in zip(out["input_ids"], out["labels"], out["attention_mask"])]


# ------------------------------------------------------------------------------ the label mask
def test_chatml_label_mask_matches_the_rendered_template_token_by_token(tmp_path):
    """MiniLM's real tokenizer with the built-in ChatML template: the loss covers exactly the tokens
    of each assistant reply and its end-of-turn marker, nothing of the system, user or tool turns."""
    src = minilm_path()
    tok = tokenizer(src)
    spec = chat_spec(tmp_path, src, chat_template="chatml")
    encoded = unpacked(spec, src)
    assert chat.render(tok, chat.CHATML, rows()[1]) == ROW1_CHATML
    for row, (ids, labels) in zip(rows(), encoded):
        text = "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in row)
        spans, at = [], 0
        for reply in (t["content"] for t in row if t["role"] == "assistant"):
            head = text.index(f"<|im_start|>assistant\n{reply}<|im_end|>\n", at) + len("<|im_start|>assistant\n")
            at = head + len(reply) + len("<|im_end|>\n")
            spans.append((head, at))
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert ids == enc["input_ids"]
        expected = [t if any(a <= s < b for a, b in spans) else -100
                    for t, (s, _) in zip(enc["input_ids"], enc["offset_mapping"])]
        assert labels == expected
        learned = tok.decode([t for t in labels if t != -100]).replace(" ", "")
        assert learned == "".join(f"{t['content']}<|im_end|>" for t in row if t["role"] == "assistant") \
            .lower().replace(" ", "").replace("é", "e")


def test_mask_equals_transformers_generation_mask_on_another_template(tmp_path, zephyr_tokenizer):
    """On a tokenizer with its own template (marked with `{% generation %}`), the prefix-delta mask
    equals the assistant mask transformers computes from the template's markers."""
    tok = tokenizer(zephyr_tokenizer)
    encoded = unpacked(chat_spec(tmp_path, zephyr_tokenizer), zephyr_tokenizer)
    for row, (ids, labels) in zip(rows(), encoded):
        turns = [{"role": t["role"], "content": t["content"]} for t in row]
        hf = tok.apply_chat_template(turns, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert ids == list(hf["input_ids"])
        assert [label != -100 for label in labels] == [bool(m) for m in hf["assistant_masks"]]
        assert sum(hf["assistant_masks"]) > 0


def test_train_on_last_assistant_and_all(tmp_path, zephyr_tokenizer):
    tok = tokenizer(zephyr_tokenizer)
    for row, (ids, labels) in zip(rows(), unpacked(chat_spec(tmp_path, zephyr_tokenizer,
                                                             train_on="last_assistant"), zephyr_tokenizer)):
        last = [t["content"] for t in row if t["role"] == "assistant"][-1]
        assert tok.decode([t for t in labels if t != -100]) == f"{last}</s>\n"
    for ids, labels in unpacked(chat_spec(tmp_path, zephyr_tokenizer, train_on="all"), zephyr_tokenizer):
        assert labels == ids


def test_the_named_template_overrides_the_tokenizers_own(tmp_path, zephyr_tokenizer):
    tok = tokenizer(zephyr_tokenizer)
    ids, _ = unpacked(chat_spec(tmp_path, zephyr_tokenizer, chat_template="chatml"), zephyr_tokenizer)[1]
    assert tok.decode(ids) == ROW1_CHATML


def test_packed_chats_keep_every_label(tmp_path, zephyr_tokenizer):
    table = pa.Table.from_pylist([{"messages": r} for r in rows()] * 4)
    spec = chat_spec(tmp_path, zephyr_tokenizer, max_length=256)
    plain = data.TokenizedRows(spec, {}, str(zephyr_tokenizer))(table)
    packed = data.TokenizedRows(chat_spec(tmp_path, zephyr_tokenizer, max_length=256, packing=True), {},
                                str(zephyr_tokenizer))(table)
    assert len(packed["input_ids"]) < len(plain["input_ids"])
    # The labels the loss reads (position 0 of a row, and of each packed example, is no target).
    assert (packed["labels"][:, 1:] != -100).sum() == (plain["labels"][:, 1:] != -100).sum() > 0


# ------------------------------------------------------------------------------ truncation
def sizes(tok, turns) -> int:
    return len(tok.apply_chat_template(turns, tokenize=True, return_dict=True)["input_ids"])


def test_truncation_keeps_whole_turns(tmp_path, zephyr_tokenizer):
    """Row 0 (system, user, assistant, tool, assistant, user, assistant) does not fit: `right` keeps
    the turns up to the reply before the last exchange, `left` keeps the system prompt and drops
    the first exchange; both are exactly the tokens of those whole turns, rendered."""
    tok = tokenizer(zephyr_tokenizer)
    turns = [{"role": t["role"], "content": t["content"]} for t in rows()[0]]
    right_part, left_part = turns[:5], turns[:1] + turns[5:]
    limit = max(sizes(tok, right_part), sizes(tok, left_part))
    assert limit < sizes(tok, turns)
    for truncation, part in (("right", right_part), ("left", left_part)):
        spec = chat_spec(tmp_path, zephyr_tokenizer, max_length=limit, truncation=truncation)
        ids, labels = data.encode(tok, spec, rows()[0])
        assert ids == list(tok.apply_chat_template(part, tokenize=True, return_dict=True)["input_ids"])
        assert tok.decode([t for t in labels if t != -100]).count("</s>") == sum(t["role"] == "assistant"
                                                                                  for t in part)


def test_a_chat_that_no_turn_cut_fits_is_cut_by_tokens(tmp_path, zephyr_tokenizer):
    """`left`: even the system prompt and the last exchange are too long: tokens go from the start,
    the end of the chat (its last reply) stays."""
    tok = tokenizer(zephyr_tokenizer)
    spec = chat_spec(tmp_path, zephyr_tokenizer, max_length=12, truncation="left")
    ids, labels = data.encode(tok, spec, rows()[0])
    whole = list(tok.apply_chat_template([{"role": t["role"], "content": t["content"]} for t in rows()[0][:1] + rows()[0][5:]],
                                         tokenize=True, return_dict=True)["input_ids"])
    assert len(ids) == 12 and ids == whole[-12:]
    assert tok.decode([t for t in labels if t != -100]).endswith("Yes, bring one.</s>\n")


@pytest.mark.parametrize("truncation, expected", [
    ("none", "row 1: the chat is "),
    ("right", "row 1: the turns before the first assistant reply that carries loss are"),
])
def test_chats_that_cannot_be_used_stop_before_ray_naming_the_row(tmp_path, zephyr_tokenizer, truncation, expected):
    """Row 1's system prompt alone fills model.max_length: `none` refuses the chat, `right` could
    keep no assistant token."""
    long_system = [{"role": "system", "content": "rain " * 60}, *rows()[1][1:]]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps({"messages": r}) + "\n" for r in (rows()[1], long_system)))
    spec = chat_spec(tmp_path, zephyr_tokenizer, max_length=48, truncation=truncation, val_fraction=0.5)
    plan = data.inspect(spec)
    with pytest.raises(SpecError, match=re.escape(expected)):
        data.check_lengths(spec, plan, str(zephyr_tokenizer))
    left = chat_spec(tmp_path, zephyr_tokenizer, max_length=48, truncation="left", val_fraction=0.5)
    data.check_lengths(left, data.inspect(left), str(zephyr_tokenizer))  # cuts the system prompt's tokens


# ------------------------------------------------------------------------------ templates
def test_a_template_that_renders_earlier_turns_differently_is_refused(tmp_path, zephyr_tokenizer):
    """A template that marks the final turn (so turns[:k] is no prefix of the whole chat) cannot
    locate the replies: a clear error, not a wrong mask."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(zephyr_tokenizer)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
                         "{% if loop.last %} [end]{% endif %}\n{% endfor %}")
    with pytest.raises(ValueError, match="renders turns 0..2 differently"):
        data.encode(tok, chat_spec(tmp_path, zephyr_tokenizer), rows()[1])


def test_a_tokenizer_without_a_template_needs_data_chat_template(tmp_path):
    spec = chat_spec(tmp_path, minilm_path())
    with pytest.raises(SpecError, match="data.chat_template: .* has no chat template; set data.chat_template to a built-in one"):
        data.check_lengths(spec, data.inspect(spec), minilm_path())
