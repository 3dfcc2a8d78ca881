"""Multi-turn chat rows (`data.messages`): checked in the driver, rendered by a chat template,
tokenized with a loss mask over the assistant turns, and truncated by whole turns.

A row is a list of `{role, content}` turns (roles system, user, assistant, tool; tool turns are
rendered as text like any other turn, and keys other than role and content are not passed to the
template). The chat template is the tokenizer's own, or a built-in one named by
`data.chat_template`, which then overrides the tokenizer's (see `template_for`).

The loss mask is found without asking the template to mark it (only templates written with
`{% generation %}` can, and most are not): each trained assistant turn k spans the characters
between the render of turns[:k] with the generation prompt (so the assistant header carries no
loss) and the render of turns[:k+1]. Both must be prefixes of the whole chat's render, which holds
for ChatML and for every template that renders earlier turns the same way whatever follows them.
The whole chat is then tokenized once (as at inference) and a token carries loss when its first
character lies in such a span.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ftray.schema import SpecError

if TYPE_CHECKING:
    from ftray.spec.job import JobSpec

ROLES = ("system", "user", "assistant", "tool")

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
          "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")
TEMPLATES = {"chatml": CHATML}  # the built-in templates `data.chat_template` may name


# ------------------------------------------------------------------------------- checking rows
def turns_problem(turns) -> str | None:
    """What is wrong with one row's turns (None when nothing is)."""
    if not isinstance(turns, list) or not turns:
        return f"is not a list of {{role, content}} turns (got {_shown(turns)})"
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"turn {j} is not a {{role, content}} mapping (got {_shown(turn)})"
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            return f"turn {j} has unknown role {_shown(role)} (roles: {', '.join(ROLES)})"
        if content is None:
            return f"turn {j} ({role}) has no content"
        if not isinstance(content, str):
            return f"turn {j} ({role}): content is {type(content).__name__}, not a string"
    if not any(turn["role"] == "assistant" for turn in turns):
        return "has no assistant turn (nothing to learn)"
    return None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_rows(values: list, column: str, where: str) -> None:
    """SpecError naming the first row of `values` (one column's rows) whose turns are wrong."""
    for i, turns in enumerate(values):
        problem = turns_problem(turns)
        if problem:
            raise SpecError(f"{where}: row {i}: {column!r} {problem}")


def explain_unreadable_jsonl(fs, path: str, key: str, column: str) -> None:
    """pyarrow's JSON reader refuses a file whose rows give `column` different types (a string in
    one row, a list of turns in others) without a usable row number. Read such a file line by line
    and raise the SpecError naming the first bad row; return when every row looks right."""
    with fs.open_input_stream(path) as stream:
        lines = [line for line in stream.read().decode("utf-8", errors="replace").splitlines() if line.strip()]
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecError(f"{key}: {path}: row {i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise SpecError(f"{key}: {path}: row {i}: not a JSON object")
        if column not in row:  # a missing column is `read_table`'s message to give
            continue
        problem = turns_problem(row.get(column))
        if problem:
            raise SpecError(f"{key}: {path}: row {i}: {column!r} {problem}")


# ------------------------------------------------------------------------------- the template
def template_for(tok, spec: JobSpec) -> str | None:
    """The template to render with: `data.chat_template`'s built-in one when it names one (it
    overrides the tokenizer's: a user who names one means it), else None for the tokenizer's own.
    ValueError when the tokenizer has none."""
    name = spec.data.chat_template
    if name != "tokenizer":
        return TEMPLATES[name]
    if not tok.chat_template:
        raise ValueError("the tokenizer has no chat template; set data.chat_template to a built-in one "
                         f"({', '.join(TEMPLATES)})")
    return None


def check_tokenizer(tok, spec: JobSpec, key: str) -> None:
    """SpecError unless this tokenizer can encode chats: a template, and character offsets."""
    if spec.data.chat_template == "tokenizer" and not tok.chat_template:
        raise SpecError(f"data.chat_template: the tokenizer at {key} has no chat template; set "
                        f"data.chat_template to a built-in one ({', '.join(TEMPLATES)})")
    try:
        tok("a", add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise SpecError(f"{key}: data.messages needs a fast tokenizer (one that gives character "
                        "offsets); this one is a slow (Python) tokenizer") from None


def render(tok, template: str | None, turns: list[dict], generation_prompt: bool = False) -> str:
    """The chat as text; ValueError when the template refuses it (some insist on alternating roles)."""
    try:
        return tok.apply_chat_template(turns, chat_template=template, tokenize=False,
                                       add_generation_prompt=generation_prompt)
    except Exception as e:  # noqa: BLE001 - jinja's errors (raise_exception in templates) vary
        raise ValueError(f"the chat template cannot render this chat: {e}".splitlines()[0]) from None


# ------------------------------------------------------------------------------- encoding
@dataclass
class Chat:
    """A row's turns (only role and content) and, per turn, whether its tokens carry loss (`whole`:
    every token of the rendered chat does, the template's own included)."""
    turns: list[dict]
    trained: list[bool]
    whole: bool = False

    def part(self, keep: list[int]) -> "Chat":
        return Chat([self.turns[i] for i in keep], [self.trained[i] for i in keep], self.whole)


def chat_of(row: list[dict], train_on: str) -> Chat:
    """The turns of a row (extra keys such as a tool call's name dropped) marked by `data.train_on`."""
    turns = [{"role": t["role"], "content": t["content"]} for t in row]
    assistant = [t["role"] == "assistant" for t in turns]
    if train_on == "all":
        return Chat(turns, [True] * len(turns), whole=True)
    if train_on == "last_assistant":
        last = max(i for i, a in enumerate(assistant) if a)
        return Chat(turns, [i == last for i in range(len(turns))])
    return Chat(turns, assistant)


def loss_spans(tok, template: str | None, chat: Chat, text: str) -> list[tuple[int, int]]:
    """Character ranges of `text` (the whole chat rendered) that carry loss."""
    if chat.whole:
        return [(0, len(text))]
    spans = []
    for k, trained in enumerate(chat.trained):
        if not trained:
            continue
        start = render(tok, template, chat.turns[:k], generation_prompt=True)
        end = render(tok, template, chat.turns[:k + 1])
        if not (text.startswith(start) and text.startswith(end)):
            raise ValueError(f"the chat template renders turns 0..{k} differently inside the whole chat, so "
                             "the assistant turns cannot be located; use data.chat_template: chatml")
        spans.append((len(start), len(end)))
    return spans


def encode_whole(tok, template: str | None, chat: Chat) -> tuple[list[int], list[int]]:
    """Token ids of the rendered chat and their labels (-100 outside the loss spans)."""
    text = render(tok, template, chat.turns)
    spans = loss_spans(tok, template, chat, text)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [t if any(a <= s < b for a, b in spans) else -100 for t, (s, _) in zip(ids, enc["offset_mapping"])]
    return ids, labels


def encode_chat(tok, spec: JobSpec, row: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and labels of one chat row under `data.truncation` and `model.max_length`:
    whole turns are dropped where that makes the chat fit, tokens are cut where it cannot. A
    ValueError says why a row cannot be used (the caller names the row)."""
    d, limit = spec.data, spec.model.max_length
    template = template_for(tok, spec)
    chat = chat_of(row, d.train_on)
    ids, labels = encode_whole(tok, template, chat)
    if len(ids) <= limit:
        return ids, labels
    if d.truncation == "none":
        raise ValueError(f"the chat is {len(ids)} tokens, model.max_length is {limit} and data.truncation is none")
    for keep in shorter_chats(chat, d.truncation):
        part = encode_whole(tok, template, chat.part(keep))
        if len(part[0]) <= limit and _learns(part[1]):
            return part
    if d.truncation == "right":
        return cut_tokens(ids, labels, limit, "right")
    return cut_tokens(*encode_whole(tok, template, chat.part(_last_exchange(chat))), limit, "left")


def shorter_chats(chat: Chat, truncation: str):
    """Turn indices of ever shorter chats made of whole turns, longest first: for `right`, the chat
    up to an earlier assistant turn; for `left`, the leading system turns and the chat from a later
    user turn on (so that it still opens with a user turn, as templates expect)."""
    roles = [t["role"] for t in chat.turns]
    n = len(roles)
    if truncation == "right":
        for k in range(n - 1, 0, -1):
            if roles[k - 1] == "assistant":
                yield list(range(k))
        return
    system = next((i for i, r in enumerate(roles) if r != "system"), n)
    for j in range(system + 1, n):
        if roles[j] == "user":
            yield list(range(system)) + list(range(j, n))


def _last_exchange(chat: Chat) -> list[int]:
    """The shortest chat `shorter_chats` makes for `left` (the whole chat when it makes none)."""
    return ([*range(len(chat.turns))], *shorter_chats(chat, "left"))[-1]


def _learns(labels: list[int]) -> bool:
    return any(label != -100 for label in labels)


def cut_tokens(ids: list[int], labels: list[int], limit: int, truncation: str) -> tuple[list[int], list[int]]:
    """No whole-turn cut fits: keep `limit` tokens, cutting the end (`right`) or the start
    (`left`, never past the first token with loss). ValueError when no token with loss is kept."""
    first = next((i for i, label in enumerate(labels) if label != -100), len(labels))
    start = 0 if truncation == "right" else min(len(ids) - limit, first)
    if first >= start + limit:
        raise ValueError(f"the turns before the first assistant reply that carries loss are {first} tokens, "
                         f"model.max_length is {limit}: no assistant token would be learned (use "
                         "data.truncation: left or a larger max_length)")
    return ids[start:start + limit], labels[start:start + limit]
