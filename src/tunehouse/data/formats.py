"""The three training-file formats: how a line's format is recognised and how each line is checked.

chat: `{"messages": [...]}`; completion (legacy): `{"prompt": ..., "completion": ...}`;
preference (DPO): `{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tunehouse.data.chat_checks import Finding, check_chat_example, check_messages, check_tools, type_name

FORMATS = ("chat", "completion", "preference")
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")


def line_format(example: dict[str, Any]) -> str | None:
    """The format a JSON object is written in, judged by its keys (None when none matches)."""
    if "messages" in example:
        return "chat"
    if "preferred_output" in example or "non_preferred_output" in example or "input" in example:
        return "preference"
    lowered = {key.lower() for key in example if isinstance(key, str)}
    if "prompt" in lowered or "completion" in lowered:
        return "completion"
    return None


def check_completion_example(example: dict[str, Any]) -> Iterator[Finding]:
    """A legacy line needs a string prompt and a non-empty string completion; other keys are dropped."""
    for key, category in (("prompt", "missing_prompt"), ("completion", "missing_completion")):
        if key not in example:
            miscased = next((k for k in example if isinstance(k, str) and k.lower() == key), None)
            hint = f" (found {miscased!r}: keys are lower-case)" if miscased else ""
            yield category, key, f"no `{key}`{hint}"
        elif not isinstance(example[key], str):
            yield category, key, f"must be a string, got {type_name(example[key])}"
    completion = example.get("completion")
    if isinstance(completion, str) and not completion.strip():
        yield "missing_completion", "completion", "is empty"
    for key in example:
        if key not in ("prompt", "completion", "group") and (
            not isinstance(key, str) or key.lower() not in ("prompt", "completion")
        ):
            yield "unrecognized_key", key, f"unrecognized key {key!r} (ignored)"


def _check_output(output: Any, where: str) -> Iterator[Finding]:
    if not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict):
        yield "invalid_preference_output", where, "must be an array of exactly one message"
        return
    message = output[0]
    if message.get("role", "assistant") != "assistant":
        yield "invalid_preference_output", f"{where}[0].role", f"must be assistant, got {message.get('role')!r}"
        return
    content = message.get("content")
    if not (isinstance(content, str) and content) and not message.get("tool_calls"):
        yield "invalid_preference_output", f"{where}[0].content", "must be non-empty text"


def check_preference_example(example: dict[str, Any]) -> Iterator[Finding]:
    """A DPO line: a prompt conversation and one preferred and one non-preferred assistant reply."""
    missing = [key for key in PREFERENCE_KEYS if key not in example]
    for key in missing:
        yield "preference_missing_key", key, f"no `{key}`"
    given = example.get("input")
    if "input" in example:
        if not isinstance(given, dict):
            yield "preference_missing_key", "input", f"must be an object with messages, got {type_name(given)}"
        else:
            yield from check_messages(given.get("messages"), "input.messages")
            yield from check_tools(given)
    for key in PREFERENCE_KEYS[1:]:
        if key in example:
            yield from _check_output(example[key], key)
    if not missing and example["preferred_output"] == example["non_preferred_output"]:
        yield "identical_preference_outputs", "preferred_output", "is the same as non_preferred_output"
    for key in example:
        if key not in PREFERENCE_KEYS:
            yield "unrecognized_key", key, f"unrecognized key {key!r} (ignored)"


CHECKS = {
    "chat": check_chat_example,
    "completion": check_completion_example,
    "preference": check_preference_example,
}
