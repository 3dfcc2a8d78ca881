"""Regenerate the small offline datasets the jobs use (deterministic; run from the repo root):

    python jobs/data/make_data.py

- digits*.parquet: scikit-learn's bundled 8x8 digits, `pixels` (64 floats in [0, 1]) and `label`;
  split into all digits, digits 0-4 (pretraining) and digits 5-9 (transfer).
- topics_noisy.jsonl / topics_val.jsonl: new sentences of the same topics, 40% of the labels
  wrong / all labels right: a cheaply labelled training set and a clean validation set for
  distillation.
- instructions.jsonl: `prompt`/`response` pairs (arithmetic, opposites, colours, word reversal)
  for instruction tuning of a small decoder.
- preferences.jsonl: `prompt` with a `chosen` and a `rejected` answer for preference tuning after
  jobs/llm_sft.yaml. The rule the pairs teach: answer in a full sentence ending with a full stop.
  instructions.jsonl follows it for sums, opposites and colours (there the rejected answer is the
  bare result, which the SFT model already disprefers), never for word reversal (a bare list of
  words, which the SFT model prefers); reversal prompts are 60% of the pairs, so the SFT model
  prefers the chosen answer of about 40% of them.
- grpo_prompts.jsonl: `prompt` and its `answer` (prompts of `instructions`, 60% word reversal) for
  GRPO after jobs/llm_sft.yaml, rewarded for a format: a sentence ending with a full stop, which the
  SFT model never writes for a reversal. grpo_pbt_prompts.jsonl: 120 more draws, for the PBT sweep.
- chats.jsonl: multi-turn `messages` (a system prompt, then 2-3 exchanges) for chat tuning. The
  system prompt picks the reply style (terse or full sentences), a follow-up question refers to the
  previous answer ("now double it"), and some chats carry a `tool` turn whose result the reply uses.
- topics.jsonl: short sentences about four topics, `text` and a string `label`, built from
  templates with many word choices so that the classifier has to read the content words.
- digit_questions*.parquet: an 8x8 digit `image` (nested lists) with a yes/no `question` about it
  (even/odd, small/big) and the `answer`. Every image comes once with a question answered yes and
  once with one answered no, and each question is yes for half the digits: the image alone or the
  question alone says nothing about the answer, both together say everything. Train and
  validation rows use disjoint images.
"""

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parent


def digits() -> None:
    d = load_digits()
    pixels = (d.data / 16.0).astype(np.float32)
    for name, keep in (("digits", d.target >= 0), ("digits_0_4", d.target <= 4), ("digits_5_9", d.target >= 5)):
        table = pa.table({"pixels": pa.array(list(pixels[keep]), type=pa.list_(pa.float32())),
                          "label": pa.array(d.target[keep].astype(np.int64))})
        pq.write_table(table, OUT / f"{name}.parquet")


TOPICS = {
    "sports": (["the striker", "our goalkeeper", "the coach", "the home team", "the champion", "a rookie",
                "the captain", "the defender"],
               ["scored twice in", "was injured before", "celebrated after", "trained hard for",
                "was sent off during", "won the trophy at"],
               ["the final match", "the league game", "the derby", "the tournament", "the second half",
                "the penalty shootout"]),
    "finance": (["the central bank", "investors", "the stock market", "a hedge fund", "the treasury",
                 "shareholders", "the lender", "analysts"],
                ["raised interest rates after", "sold shares during", "reported losses in",
                 "priced the bond ahead of", "cut its forecast for", "bought equities before"],
                ["the quarterly earnings", "the inflation report", "the market rally", "the budget deficit",
                 "the merger", "the fiscal year"]),
    "weather": (["heavy rain", "a cold front", "the storm", "strong winds", "the heatwave", "thick fog",
                 "snowfall", "a tropical cyclone"],
                ["is expected over", "swept across", "will bring showers to", "caused flooding in",
                 "lowered temperatures in", "is moving toward"],
                ["the coastal region", "the northern valleys", "the mountains", "the city this weekend",
                 "the plains overnight", "the islands"]),
    "tech": (["the startup", "engineers", "the chipmaker", "a software update", "the new smartphone",
              "researchers", "the cloud provider", "the app"],
             ["released a patch for", "shipped a processor with", "open-sourced the code of",
              "fixed a security bug in", "launched a beta of", "trained a neural network on"],
             ["the operating system", "the laptop lineup", "the database engine", "the web browser",
              "the compiler", "the data center"]),
}


def topics(name: str = "topics", rows: int = 640, seed: int = 0, noise: float = 0.0) -> None:
    """`noise`: the share of rows whose label is replaced by a wrong one (a cheaply labelled set)."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    with open(OUT / f"{name}.jsonl", "w") as f:
        for i in range(rows):
            label = names[i % len(names)]
            subject, verb, obj = (rng.choice(part) for part in TOPICS[label])
            if noise and rng.random() < noise:
                label = rng.choice([n for n in names if n != label])
            f.write(json.dumps({"text": f"{subject} {verb} {obj}.".capitalize(), "label": label}) + "\n")


OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "open": "closed", "light": "dark",
             "early": "late", "full": "empty", "happy": "sad", "old": "new", "high": "low", "hard": "soft"}
COLORS = {"grass": "green", "snow": "white", "the sky": "blue", "coal": "black", "a banana": "yellow",
          "a tomato": "red", "an orange": "orange", "chocolate": "brown"}
WORDS = ["cat", "dog", "tree", "river", "house", "car", "book", "song", "lamp", "bird", "stone", "cloud"]


def instructions(rows: int = 800) -> None:
    """Instruction/response pairs for causal-LM fine-tuning (`prompt`, `response`)."""
    rng = random.Random(1)
    with open(OUT / "instructions.jsonl", "w") as f:
        for i in range(rows):
            kind = i % 4
            if kind == 0:
                a, b = rng.randint(0, 20), rng.randint(0, 20)
                pair = (f"add {a} and {b}.", f"{a} plus {b} is {a + b}.")
            elif kind == 1:
                word = rng.choice(sorted(OPPOSITES))
                pair = (f"what is the opposite of {word}?", f"the opposite of {word} is {OPPOSITES[word]}.")
            elif kind == 2:
                thing = rng.choice(sorted(COLORS))
                pair = (f"what color is {thing}?", f"{thing} is {COLORS[thing]}.")
            else:
                words = rng.sample(WORDS, 3)
                pair = (f"reverse the words: {' '.join(words)}", " ".join(reversed(words)))
            f.write(json.dumps({"prompt": pair[0], "response": pair[1]}) + "\n")


def preferences(rows: int = 800, reversal_share: float = 0.6) -> None:
    """Preference pairs for `jobs/dpo.yaml` (see the module docstring); new draws of the prompts
    of `instructions`."""
    rng = random.Random(5)
    with open(OUT / "preferences.jsonl", "w") as f:
        for _ in range(rows):
            if rng.random() < reversal_share:
                words = rng.sample(WORDS, 3)
                answer = " ".join(reversed(words))
                row = (f"reverse the words: {' '.join(words)}", f"the reversed words are {answer}.", answer)
            elif (kind := rng.randrange(3)) == 0:
                a, b = rng.randint(0, 20), rng.randint(0, 20)
                row = (f"add {a} and {b}.", f"{a} plus {b} is {a + b}.", str(a + b))
            elif kind == 1:
                word = rng.choice(sorted(OPPOSITES))
                row = (f"what is the opposite of {word}?", f"the opposite of {word} is {OPPOSITES[word]}.",
                       OPPOSITES[word])
            else:
                thing = rng.choice(sorted(COLORS))
                row = (f"what color is {thing}?", f"{thing} is {COLORS[thing]}.", COLORS[thing])
            f.write(json.dumps(dict(zip(("prompt", "chosen", "rejected"), row))) + "\n")


def grpo_prompts(rows: int = 400, reversal_share: float = 0.6, name: str = "grpo_prompts", seed: int = 7) -> None:
    """Prompts for `jobs/grpo.yaml`: new draws of the prompts of `instructions`, with the `answer`
    that instructions.jsonl would give. The reward there checks a format (a sentence of two or more
    words ending with a full stop), which the SFT model follows for sums, opposites and colours and
    never for word reversal (bare words): reversal prompts are 60% of the rows."""
    rng = random.Random(seed)
    with open(OUT / f"{name}.jsonl", "w") as f:
        for _ in range(rows):
            if rng.random() < reversal_share:
                words = rng.sample(WORDS, 3)
                row = (f"reverse the words: {' '.join(words)}", " ".join(reversed(words)))
            elif (kind := rng.randrange(3)) == 0:
                a, b = rng.randint(0, 20), rng.randint(0, 20)
                row = (f"add {a} and {b}.", str(a + b))
            elif kind == 1:
                word = rng.choice(sorted(OPPOSITES))
                row = (f"what is the opposite of {word}?", OPPOSITES[word])
            else:
                thing = rng.choice(sorted(COLORS))
                row = (f"what color is {thing}?", COLORS[thing])
            f.write(json.dumps(dict(zip(("prompt", "answer"), row))) + "\n")


SYSTEMS = {"terse": "you are a calculator. reply with the result only.",
           "full": "you are a patient tutor. reply in a full sentence."}
WEATHER = ["sunny", "rainy", "cloudy", "windy", "snowy"]
CITIES = ["paris", "oslo", "lima", "cairo", "tokyo", "quito"]


def _chat(rng: random.Random, style: str) -> list[dict]:
    """One chat in `style`: an addition, a follow-up on its result, then a colour or a tool lookup."""
    terse = style == "terse"
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    turns = [{"role": "system", "content": SYSTEMS[style]},
             {"role": "user", "content": f"add {a} and {b}."},
             {"role": "assistant", "content": f"{a + b}." if terse else f"{a} plus {b} is {a + b}."},
             {"role": "user", "content": "now double it."},
             {"role": "assistant", "content": f"{2 * (a + b)}." if terse else f"double {a + b} is {2 * (a + b)}."}]
    if rng.random() < 0.5:
        thing = rng.choice(sorted(COLORS))
        turns += [{"role": "user", "content": f"what color is {thing}?"},
                  {"role": "assistant", "content": f"{COLORS[thing]}." if terse else f"{thing} is {COLORS[thing]}."}]
    else:
        city, sky = rng.choice(CITIES), rng.choice(WEATHER)
        turns += [{"role": "user", "content": f"what is the weather in {city}?"},
                  {"role": "assistant", "content": f"weather({city})"},
                  {"role": "tool", "content": f"{city}: {sky}"},
                  {"role": "assistant", "content": f"{sky}." if terse else f"it is {sky} in {city}."}]
    return turns


def chats(rows: int = 240) -> None:
    """Multi-turn chats for `jobs/chat_sft.yaml` (see the module docstring)."""
    rng = random.Random(5)
    with open(OUT / "chats.jsonl", "w") as f:
        for i in range(rows):
            f.write(json.dumps({"messages": _chat(rng, ("terse", "full")[i % 2])}) + "\n")


# Phrasings of the four properties a question asks about (a digit is even or odd, small (0-4) or big).
QUESTIONS = {
    "even": ["is it even?", "is this digit even?", "an even number?", "is the number divisible by two?"],
    "odd": ["is it odd?", "is this digit odd?", "an odd number?", "does the number leave a remainder?"],
    "small": ["is it below five?", "is this digit small?", "is the number at most four?",
              "a digit less than five?"],
    "big": ["is it five or more?", "is this digit big?", "is the number at least five?",
            "a digit greater than four?"],
}


def digit_questions(val_share: float = 0.2, seed: int = 4) -> None:
    """Multimodal yes/no questions about digit images (see the module docstring)."""
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    rng = random.Random(seed)
    order = list(range(len(images)))
    rng.shuffle(order)
    n_val = round(len(order) * val_share)
    for name, keep in (("digit_questions", order[n_val:]), ("digit_questions_val", order[:n_val])):
        rows = {"image": [], "question": [], "answer": []}
        for i in keep:
            digit = int(d.target[i])
            truths = {"even": digit % 2 == 0, "odd": digit % 2 == 1, "small": digit < 5, "big": digit >= 5}
            pair = rng.choice([("even", "odd"), ("small", "big")])
            for prop in pair:  # one of the two is true: one yes and one no per image
                rows["image"].append(images[i].tolist())
                rows["question"].append(rng.choice(QUESTIONS[prop]))
                rows["answer"].append("yes" if truths[prop] else "no")
        pq.write_table(pa.table({"image": pa.array(rows["image"], type=pa.list_(pa.list_(pa.float32()))),
                                 "question": rows["question"], "answer": rows["answer"]}),
                       OUT / f"{name}.parquet")


def digits_old_task() -> None:
    """Incremental learning: the rows jobs/pretrain_digits.yaml trained on (replayed later) and the
    rows it held out (the old task's validation set), split exactly as that run splits them."""
    from ftray.data import split_table
    train, val = split_table(pq.read_table(OUT / "digits_0_4.parquet"), 0.2, 0)  # its val_fraction, seed
    pq.write_table(train, OUT / "digits_0_4_replay.parquet")
    pq.write_table(val, OUT / "digits_0_4_val.parquet")


def sine_tasks(tasks: int = 1000, rows: int = 30, seed: int = 0) -> None:
    """Meta-learning: y = A sin(x - phase) with A in [0.1, 5], phase in [0, pi], x in [-5, 5];
    one `task` per (A, phase), `rows` points each."""
    rng = np.random.default_rng(seed)
    amp, phase = rng.uniform(0.1, 5.0, tasks), rng.uniform(0.0, np.pi, tasks)
    x = rng.uniform(-5.0, 5.0, (tasks, rows))
    y = amp[:, None] * np.sin(x - phase[:, None])
    pq.write_table(pa.table({"task": pa.array(np.repeat(np.arange(tasks), rows).astype(np.int64)),
                             "x": pa.array(x.reshape(-1).astype(np.float32)),
                             "y": pa.array(y.reshape(-1).astype(np.float32))}), OUT / "sine_tasks.parquet")


if __name__ == "__main__":
    digits()
    topics()
    topics("topics_noisy", rows=640, seed=2, noise=0.4)  # distillation: the student's noisy labels
    topics("topics_val", rows=200, seed=3)  # distillation: clean held-out sentences
    instructions()
    preferences()
    grpo_prompts()
    grpo_prompts(rows=120, name="grpo_pbt_prompts", seed=8)  # jobs/grpo_pbt.yaml: a smaller population budget
    chats()
    digit_questions()
    digits_old_task()
    sine_tasks()
