"""Scoring the validation set as a classifier: the class probabilities the trainer reports are the
model's own, read off a plain transformers forward of the same prompt and labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.train.conftest import QuietReporter
from tunehouse.models.template import render_chat_prompt
from tunehouse.train.classify import ValidationClassifier, label_of, prompt_ids
from tunehouse.train.config import SFTConfig
from tunehouse.train.recipe import Trainer
from tunehouse.train.sft import sft_trainer


def sentiment_rows(n: int) -> list[dict[str, Any]]:
    words = ["great", "awful", "lovely", "dreadful", "superb", "terrible"]
    return [
        {"prompt": f"Review {i}: a {words[i % 6]} film\n\n###\n\n", "completion": [" positive", " negative"][i % 2]}
        for i in range(n)
    ]


def chat_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "Label the review."},
                {"role": "user", "content": row["prompt"].split("\n")[0]},
                {"role": "assistant", "content": row["completion"].strip()},
            ]
        }
        for row in sentiment_rows(n)
    ]


def direct_log_probs(model: Any, prompt: list[int], label: list[int]) -> float:
    """log p(label | prompt) from one plain forward of the whole sequence."""
    ids = torch.tensor([prompt + label])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(float(log_probs[len(prompt) - 1 + k, token]) for k, token in enumerate(label))


def expected_probabilities(
    model_dir: Path, classes: list[str], rows: list[dict[str, Any]]
) -> tuple[list[int], list[list[float]]]:
    """Each row's class and its class probabilities, normalised over the classes, computed apart from
    the trainer: a fresh model (a new LoRA adapter changes nothing before training) and tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    class_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in classes]
    labels, probabilities = [], []
    for row in rows:
        prompt = prompt_ids(tokenizer, row)
        scores = torch.tensor([direct_log_probs(model, prompt, ids) for ids in class_ids], dtype=torch.float64)
        labels.append(classes.index(label_of(row)))
        probabilities.append(torch.softmax(scores, dim=-1).tolist())
    return labels, probabilities


def test_the_prompt_is_what_training_puts_before_the_label(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    legacy = sentiment_rows(1)[0]
    assert prompt_ids(tokenizer, legacy) == tokenizer(legacy["prompt"], add_special_tokens=False)["input_ids"]
    chat = chat_rows(1)[0]
    rendered = render_chat_prompt(tokenizer, chat["messages"][:-1])
    assert prompt_ids(tokenizer, chat) == tokenizer(rendered, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("rows", [sentiment_rows(6), chat_rows(6)], ids=["prompt-completion", "chat"])
def test_single_token_labels_score_as_the_model_next_token_distribution(
    make_trainer: Callable[..., Trainer], tiny_model_dir: Path, rows: list[dict[str, Any]]
) -> None:
    trainer = make_trainer()
    classes = sorted({label_of(row) for row in rows})
    reporter = QuietReporter()
    classifier = ValidationClassifier(trainer.tokenizer, classes, rows, 2048, reporter)
    assert classifier.single_token and not reporter.messages
    scores = classifier.score(trainer)
    labels, probabilities = expected_probabilities(tiny_model_dir, classes, rows)
    assert scores["labels"] == labels
    torch.testing.assert_close(torch.tensor(scores["probabilities"]), torch.tensor(probabilities), atol=1e-4, rtol=0)


def test_labels_of_several_tokens_score_their_whole_sequence_and_warn(
    make_trainer: Callable[..., Trainer], tiny_model_dir: Path
) -> None:
    # " very good" and " very bad" share their first token: only the whole sequence tells them apart
    rows = [
        {"prompt": f"Review {i}\n\n###\n\n", "completion": [" very good", " very bad", " fine"][i % 3]}
        for i in range(6)
    ]
    trainer = make_trainer()
    classes = [" fine", " very bad", " very good"]
    reporter = QuietReporter()
    classifier = ValidationClassifier(trainer.tokenizer, classes, rows, 2048, reporter)
    assert not classifier.single_token
    assert "whole token sequence" in reporter.messages[0]
    scores = classifier.score(trainer)
    labels, probabilities = expected_probabilities(tiny_model_dir, classes, rows)
    assert scores["labels"] == labels
    torch.testing.assert_close(torch.tensor(scores["probabilities"]), torch.tensor(probabilities), atol=1e-4, rtol=0)


def test_every_epoch_reports_the_scores_beside_the_full_validation_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = SFTConfig(
        base_model_dir=tiny_model_dir,
        output_dir=tmp_path / "out",
        checkpoint_dir=tmp_path / "checkpoints",
        n_epochs=2,
        batch_size=4,
        learning_rate=1e-3,
        seed=7,
        bf16=False,
        classification_classes=[" negative", " positive"],
    )
    reporter = QuietReporter()
    trainer = sft_trainer(config, reporter)
    trainer.setup(sentiment_rows(8), sentiment_rows(4))
    trainer.run()
    scored = [step for step in reporter.steps if "classification_scores" in step]
    assert [step["step"] for step in scored] == [2, 4]  # each epoch's last step, as full_valid_loss
    assert all("full_valid_loss" in step for step in scored)
    assert scored[-1]["classification_scores"]["labels"] == [1, 0, 1, 0]
