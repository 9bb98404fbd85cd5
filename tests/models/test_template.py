"""The chat template decides which tokens are trained; serving must render the same text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from tunehouse.errors import DataValidationError
from tunehouse.models.template import (
    IGNORE_INDEX,
    encode_chat_example,
    encode_completion_example,
    normalize_messages,
    render_chat_prompt,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "A model."},
]


@pytest.fixture(scope="module")
def tokenizer(shipped_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(shipped_model_dir))


def trained_text(tokenizer: Any, example: Any) -> str:
    return tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])


def test_only_assistant_turns_and_their_end_of_turn_are_trained(tokenizer: Any) -> None:
    example = encode_chat_example(tokenizer, CONVERSATION)
    assert trained_text(tokenizer, example) == "Hello there<|im_end|>\nA model.<|im_end|>\n"
    whole = tokenizer.apply_chat_template(normalize_messages(CONVERSATION), tokenize=False)
    assert example.input_ids == tokenizer(whole, add_special_tokens=False)["input_ids"]


def test_weight_zero_turns_are_context_only(tokenizer: Any) -> None:
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["weight"] = 0
    example = encode_chat_example(tokenizer, messages)
    assert trained_text(tokenizer, example) == "A model.<|im_end|>\n"
    assert example.input_ids == encode_chat_example(tokenizer, CONVERSATION).input_ids


def test_training_prompt_equals_serving_prompt(tokenizer: Any) -> None:
    example = encode_chat_example(tokenizer, CONVERSATION[:3])
    first_trained = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    served = tokenizer(render_chat_prompt(tokenizer, CONVERSATION[:2]), add_special_tokens=False)["input_ids"]
    assert example.input_ids[:first_trained] == served


def test_developer_role_and_content_parts_are_normalized() -> None:
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
    ]
    assert normalize_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": '[{"id": "c1", "type": "function"}]'},
    ]


def test_legacy_completion_trains_completion_and_eos(tokenizer: Any) -> None:
    example = encode_completion_example(tokenizer, "Q: sky? ->", " blue\n")
    assert trained_text(tokenizer, example) == " blue\n<|im_end|>"
    assert tokenizer.decode(example.input_ids).startswith("Q: sky? ->")


def test_truncation_keeps_ids_and_labels_aligned(tokenizer: Any) -> None:
    example = encode_chat_example(tokenizer, CONVERSATION, max_length=20)
    assert len(example.input_ids) == len(example.labels) == 20


def test_conversation_starting_with_assistant_is_rejected(tokenizer: Any) -> None:
    with pytest.raises(DataValidationError):
        encode_chat_example(tokenizer, [{"role": "assistant", "content": "Hi"}])
