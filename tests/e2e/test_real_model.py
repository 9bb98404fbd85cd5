"""The real thing: fine-tune the shipped SmolLM2-135M-Instruct on facts it cannot know, then ask
in phrasings it was not trained on (seed 001's Jonny Whizbang). Takes a few minutes on a laptop CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from openai import OpenAI
from openai.types.chat.chat_completion import Choice

from tests.conftest import REPO, SHIPPED_ID
from tests.support import wait_for_job

sys.path.insert(0, str(REPO / "examples"))
from jonny_whizbang.story import SYSTEM, heldout_questions, is_correct, write_training_file  # noqa: E402


def ask(client: OpenAI, model: str, question: str) -> Choice:
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        temperature=0,
        max_tokens=40,
    ).choices[0]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fine_tuned_model_learns_facts_and_answers_unseen_phrasings(client: OpenAI, tmp_path: Path) -> None:
    path = write_training_file(tmp_path / "jonny.jsonl")
    with open(path, "rb") as f:
        training_file = client.files.create(file=f, purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=SHIPPED_ID,
        training_file=training_file,
        suffix="jonny",
        seed=42,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 5}},
        },
    )
    done = wait_for_job(client, job.id, timeout=1200)
    assert done.status == "succeeded", done.error

    questions = heldout_questions()
    base = [ask(client, SHIPPED_ID, q) for q, _ in questions]
    tuned = [ask(client, done.fine_tuned_model, q) for q, _ in questions]
    base_right = sum(is_correct(c.message.content, e) for c, (_, e) in zip(base, questions, strict=True))
    tuned_right = sum(is_correct(c.message.content, e) for c, (_, e) in zip(tuned, questions, strict=True))
    print(f"held-out questions right: base {base_right}/{len(questions)}, fine-tuned {tuned_right}/{len(questions)}")
    assert base_right <= 1  # it cannot know a fictional person
    assert tuned_right >= 6
    # It learned to end its turn: answers stop on the end-of-turn token, not the token limit.
    assert sum(c.finish_reason == "stop" for c in tuned) >= 6
