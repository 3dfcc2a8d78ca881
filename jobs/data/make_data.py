"""Regenerate the small offline datasets the jobs use (deterministic; run from the repo root):

    python jobs/data/make_data.py

- digits*.parquet: scikit-learn's bundled 8x8 digits, `pixels` (64 floats in [0, 1]) and `label`;
  split into all digits, digits 0-4 (pretraining) and digits 5-9 (transfer).
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


def topics(rows: int = 640) -> None:
    rng = random.Random(0)
    names = sorted(TOPICS)
    with open(OUT / "topics.jsonl", "w") as f:
        for i in range(rows):
            label = names[i % len(names)]
            subject, verb, obj = (rng.choice(part) for part in TOPICS[label])
            f.write(json.dumps({"text": f"{subject} {verb} {obj}.".capitalize(), "label": label}) + "\n")


if __name__ == "__main__":
    digits()
    topics()
