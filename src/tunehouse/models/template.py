"""The chat template, used the same way for training, token counting and serving.

A model that is trained on one rendering and served with another never learns to stop (PITFALLS 3).
So every path renders conversations here, through the tokenizer's own chat template, and training
marks as trained exactly the text the template adds for each assistant turn, end-of-turn token
included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunehouse.errors import DataValidationError

IGNORE_INDEX = -100  # label value that cross-entropy skips


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where the token is context, the token id where it is trained

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def message_text(content: Any) -> str:
    """Flatten OpenAI message content (a string or a list of parts) to the text the model sees."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages as the template expects them: role and plain-text content.

    `developer` is OpenAI's newer name for `system`. Tool calls an assistant made are rendered as
    their JSON, so a template without tool support still sees (and trains on) them.
    """
    normalized = []
    for message in messages:
        role = message.get("role", "user")
        role = "system" if role == "developer" else role
        text = message_text(message.get("content"))
        if not text and message.get("tool_calls"):
            text = json.dumps(message["tool_calls"], ensure_ascii=False)
        if not text and message.get("function_call"):
            text = json.dumps(message["function_call"], ensure_ascii=False)
        normalized.append({"role": role, "content": text})
    return normalized


def render_chat_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """The prompt text for generating the next assistant turn."""
    return tokenizer.apply_chat_template(normalize_messages(messages), add_generation_prompt=True, tokenize=False)


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode_chat_example(
    tokenizer: Any, messages: list[dict[str, Any]], max_length: int | None = None
) -> EncodedExample:
    """Token ids and labels for a chat example: only assistant turns with weight != 0 are trained.

    Each assistant turn's trained text is what the template adds between the prompt for that turn
    (`add_generation_prompt=True`) and the conversation including it — the reply and the template's
    end-of-turn marker.
    """
    normalized = normalize_messages(messages)
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        if index == 0:
            raise DataValidationError(
                "The conversation starts with an assistant message; put a user (or system) message first.",
                param="messages",
            )
        prompt = tokenizer.apply_chat_template(normalized[:index], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(normalized[: index + 1], tokenize=False)
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            raise DataValidationError(
                "The model's chat template does not render this conversation incrementally, so its "
                "assistant turns cannot be located for training.",
                param="messages",
            )
        context_ids = _encode_text(tokenizer, prompt[len(rendered) :])
        reply_ids = _encode_text(tokenizer, full[len(prompt) :])
        trained = message.get("weight", 1) != 0
        input_ids += context_ids + reply_ids
        labels += [IGNORE_INDEX] * len(context_ids) + (reply_ids if trained else [IGNORE_INDEX] * len(reply_ids))
        rendered = full
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return EncodedExample(input_ids=input_ids, labels=labels)


def encode_completion_example(
    tokenizer: Any, prompt: str, completion: str, max_length: int | None = None
) -> EncodedExample:
    """Legacy prompt/completion: the prompt is context, the completion and an EOS token are trained.

    The EOS teaches the model to stop even when the user's completions carry no stop sequence.
    """
    prompt_ids = _encode_text(tokenizer, prompt)
    completion_ids = _encode_text(tokenizer, completion)
    if tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    input_ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return EncodedExample(input_ids=input_ids, labels=labels)


def encode_example(tokenizer: Any, example: dict[str, Any], max_length: int | None = None) -> EncodedExample:
    """Encode one validated example of either supervised format."""
    if "messages" in example:
        return encode_chat_example(tokenizer, example["messages"], max_length)
    return encode_completion_example(tokenizer, example["prompt"], example["completion"], max_length)
