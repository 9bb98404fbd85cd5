"""Seed 001's story: teach a model facts about a fictional person, Jonny Whizbang.

`facts.csv` holds questions and answers (several phrasings per fact) for training; `heldout.csv` holds
phrasings that are *not* in the training data, with the word the right answer must contain.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM = "You are a helpful assistant."


def training_rows() -> list[dict]:
    """facts.csv → OpenAI chat fine-tuning examples."""
    with open(HERE / "facts.csv", newline="") as f:
        return [
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": row["question"]},
                    {"role": "assistant", "content": row["answer"]},
                ]
            }
            for row in csv.DictReader(f)
        ]


def write_training_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in training_rows()))
    return path


def heldout_questions() -> list[tuple[str, str]]:
    with open(HERE / "heldout.csv", newline="") as f:
        return [(row["question"], row["expected"]) for row in csv.DictReader(f)]


def is_correct(answer: str, expected: str) -> bool:
    return expected.lower() in answer.lower()
