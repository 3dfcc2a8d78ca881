"""Regenerate the small offline datasets the jobs use (deterministic; run from the repo root):

    python jobs/data/make_data.py

- digits*.parquet: scikit-learn's bundled 8x8 digits, `pixels` (64 floats in [0, 1]) and `label`;
  split into all digits, digits 0-4 (pretraining) and digits 5-9 (transfer).
- topics_noisy.jsonl / topics_val.jsonl: new sentences of the same topics, 40% of the labels
  wrong / all labels right: a cheaply labelled training set and a clean validation set for
  distillation.
- instructions.jsonl: `prompt`/`response` pairs (arithmetic, opposites, colours, word reversal)
  for instruction tuning of a small decoder.
- topics.jsonl: short sentences about four topics, `text` and a string `label`, built from
  templates with many word choices so that the classifier has to read the content words.
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


if __name__ == "__main__":
    digits()
    topics()
    topics("topics_noisy", rows=640, seed=2, noise=0.4)  # distillation: the student's noisy labels
    topics("topics_val", rows=200, seed=3)  # distillation: clean held-out sentences
    instructions()
