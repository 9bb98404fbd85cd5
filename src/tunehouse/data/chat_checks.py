"""Checks of one chat example (and of the message lists inside preference examples).

The cookbook's checks, extended to what OpenAI's format allows today: `tool`/`developer` roles,
`tool_calls`, `weight`, content as a list of parts, and line-level `tools`. Each check yields a
finding `(category, field, detail)`; the caller adds the line number and the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Finding = tuple[str, str | None, str]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"})
# `group`: tunehouse's paraphrase group id (`data augment` writes it, `data split` keeps a group together).
CHAT_LINE_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions", "group"})


def type_name(value: Any) -> str:
    """JSON's name for a parsed value's type, for messages users recognise."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_tools(example: dict[str, Any]) -> Iterator[Finding]:
    tools = example.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            yield "invalid_tools", "tools", f"must be an array, got {type_name(tools)}"
        else:
            for index, tool in enumerate(tools):
                function = tool.get("function") if isinstance(tool, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    yield "invalid_tools", f"tools[{index}]", "must be an object with a function.name"
    parallel = example.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        yield "invalid_tools", "parallel_tool_calls", f"must be a boolean, got {type_name(parallel)}"
    functions = example.get("functions")
    if functions is not None and (not isinstance(functions, list) or not 1 <= len(functions) <= 128):
        yield "invalid_tools", "functions", "must be an array of 1 to 128 function definitions"


def _check_content(message: dict[str, Any], where: str) -> Iterator[Finding]:
    content = message.get("content")
    calls_a_tool = bool(message.get("tool_calls") or message.get("function_call"))
    if content is None and calls_a_tool:
        return
    if isinstance(content, str):
        if not content and not calls_a_tool:
            yield "missing_content", f"{where}.content", "is empty"
        return
    if isinstance(content, list):
        texts = 0
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts += 1
            elif kind in ("image_url", "input_image", "image"):
                yield "unsupported_content_part", f"{where}.content[{index}]", f"{kind} part ignored"
            else:
                yield "missing_content", f"{where}.content[{index}]", "is not a text part"
        if not texts and not calls_a_tool:
            yield "missing_content", f"{where}.content", "has no text part"
        return
    yield "missing_content", f"{where}.content", f"must be a string or a list of parts, got {type_name(content)}"


def _check_tool_calls(calls: Any, where: str) -> Iterator[Finding]:
    if not isinstance(calls, list) or not calls:
        yield "invalid_tool_calls", f"{where}.tool_calls", "must be a non-empty array"
        return
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(call.get("id"), str)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            yield (
                "invalid_tool_calls",
                f"{where}.tool_calls[{index}]",
                "needs an id, a function.name and function.arguments as a JSON string",
            )


def check_message(message: Any, where: str) -> Iterator[Finding]:
    """Checks of one message; `where` is its field path, e.g. `messages[2]`."""
    if not isinstance(message, dict):
        yield "data_type", where, f"message must be an object, got {type_name(message)}"
        return
    role = message.get("role")
    if "role" not in message:
        yield "message_missing_key", where, "has no `role`"
    elif role not in ROLES:
        yield "unrecognized_role", f"{where}.role", f"unrecognized role {role!r}"
    if "content" not in message and not (message.get("tool_calls") or message.get("function_call")):
        yield "message_missing_key", where, "has no `content`"
    else:
        yield from _check_content(message, where)
    for key in message:
        if key not in MESSAGE_KEYS:
            yield "message_unrecognized_key", f"{where}.{key}", f"unrecognized key {key!r}"
    if "weight" in message and (role != "assistant" or message["weight"] not in (0, 1)):
        yield "invalid_weight", f"{where}.weight", f"weight {message['weight']!r} on a {role} message"
    if "tool_calls" in message:
        if role != "assistant":
            yield "invalid_tool_calls", f"{where}.tool_calls", f"only assistant messages call tools, not {role}"
        else:
            yield from _check_tool_calls(message["tool_calls"], where)
    if "name" in message and not isinstance(message["name"], str):
        yield "data_type", f"{where}.name", f"must be a string, got {type_name(message['name'])}"
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        yield "invalid_tool_message", f"{where}.tool_call_id", "tool message without a tool_call_id"


def check_messages(messages: Any, where: str = "messages") -> Iterator[Finding]:
    """Checks of a message list and of the conversation it forms."""
    if not isinstance(messages, list) or not messages:
        got = "is empty" if messages == [] else f"must be a non-empty array, got {type_name(messages)}"
        yield "missing_messages_list", where, got
        return
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        yield from check_message(message, f"{where}[{index}]")
        if not isinstance(message, dict):
            continue
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                call_ids.add(call["id"])
        answered = message.get("tool_call_id")
        if message.get("role") == "tool" and isinstance(answered, str) and answered not in call_ids:
            yield "unmatched_tool_call_id", f"{where}[{index}].tool_call_id", f"no earlier call has id {answered!r}"


def check_chat_example(example: dict[str, Any]) -> Iterator[Finding]:
    """Every finding for one chat line (already known to be a JSON object)."""
    if "messages" not in example:
        yield "missing_messages_list", "messages", "line has no `messages`"
        return
    messages = example["messages"]
    findings = list(check_messages(messages))
    yield from findings
    if any(category == "missing_messages_list" for category, _, _ in findings):
        return
    for key in example:
        if key not in CHAT_LINE_KEYS:
            yield "unrecognized_key", key, f"unrecognized key {key!r} (ignored)"
    yield from check_tools(example)
    assistants = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not assistants:
        yield "example_missing_assistant_message", "messages", "no assistant message"
        return
    first = messages[0]
    if isinstance(first, dict) and first.get("role") == "assistant":
        yield "example_starts_with_assistant", "messages[0].role", "the conversation starts with the assistant"
    if all(m.get("weight", 1) == 0 for m in assistants):
        yield "no_trained_tokens", "messages", "every assistant message has weight 0"
