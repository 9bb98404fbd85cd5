"""Held-out examples as eval items: what the worker's base-vs-fine-tuned eval and `tunehouse eval`
both build from a validation file, so the two ask the same questions and grade them the same way.

Each example becomes `{"input": ..., "expected": ...}`: a chat example's messages before its last
assistant reply and that reply's text; a legacy example's raw prompt and its completion exactly as
written (a classifier's `" positive"` keeps its space: that is what the fine-tune learned to say); a
preference example's input messages and its preferred reply. A run samples `item.input` (messages
through the chat template, a raw prompt as text) and its graders compare the answer with
`item.expected`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tunehouse.errors import InvalidRequest
from tunehouse.eval.graders.text_similarity import METRICS
from tunehouse.models.template import message_text

ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "expected": {"type": "string"},
    },
    "required": ["input", "expected"],
}
INPUT_MESSAGES: dict[str, Any] = {"type": "item_reference", "item_reference": "item.input"}
GRADER_NAMES = ("string_check", *METRICS)
DEFAULT_GRADERS = ("string_check", "fuzzy_match")
DEFAULT_THRESHOLD = 0.8
CRITERION_NAMES = {"string_check": "Exact match"}
ANSWER_TOKENS_MIN, ANSWER_TOKENS_MAX = 16, 256


def heldout_item(example: dict[str, Any]) -> dict[str, Any] | None:
    """The item of one validation example, or None for one with no answer to compare against."""
    if isinstance(example.get("prompt"), str) and isinstance(example.get("completion"), str):
        return {"input": example["prompt"], "expected": example["completion"]}
    messages = example.get("messages")
    if messages is None and isinstance(example.get("input"), dict):  # a preference (DPO) example
        preferred = example.get("preferred_output") or [{}]
        messages = [*example["input"].get("messages", []), *preferred[-1:]]
    if not isinstance(messages, list):
        return None
    last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"), default=0)
    if last == 0:
        return None
    prompt = [{"role": m.get("role", "user"), "content": message_text(m.get("content"))} for m in messages[:last]]
    return {"input": prompt, "expected": message_text(messages[last].get("content"))}


def heldout_items(examples: Iterable[dict[str, Any]], limit: int | None = None) -> list[dict[str, Any]]:
    """The items of the first `limit` examples that have an answer (all of them with None)."""
    items: list[dict[str, Any]] = []
    for example in examples:
        if limit is not None and len(items) >= limit:
            break
        item = heldout_item(example)
        if item is not None:
            items.append(item)
    return items


def comparison_criteria(
    graders: Iterable[str] = DEFAULT_GRADERS, threshold: float = DEFAULT_THRESHOLD
) -> list[dict[str, Any]]:
    """Testing criteria comparing the answer with `item.expected`: `string_check` is an exact match;
    a text-similarity metric's name (`fuzzy_match`, `bleu`, `rouge_l`…) passes at `threshold`."""
    criteria: list[dict[str, Any]] = []
    for name in graders:
        if name == "string_check":
            criteria.append(
                {
                    "type": "string_check",
                    "name": CRITERION_NAMES[name],
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.expected}}",
                    "operation": "eq",
                }
            )
        elif name in METRICS:
            criteria.append(
                {
                    "type": "text_similarity",
                    "name": f"Similarity ({name})",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.expected}}",
                    "evaluation_metric": name,
                    "pass_threshold": threshold,
                }
            )
        else:
            raise InvalidRequest(f"Unknown grader {name!r}. Expected one of {', '.join(GRADER_NAMES)}.", param="grader")
    return criteria


def answer_tokens(items: list[dict[str, Any]]) -> int:
    """A bound on the answer length that fits the longest expected answer (about 4 characters a token,
    counted generously) and stops a model that never ends long before a chat's default length."""
    longest = max((len(item["expected"]) for item in items), default=0)
    return max(ANSWER_TOKENS_MIN, min(ANSWER_TOKENS_MAX, longest // 2 + ANSWER_TOKENS_MIN))
