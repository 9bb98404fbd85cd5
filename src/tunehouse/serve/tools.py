"""Tool calling: the tools rendered into the prompt, the calls parsed out of the reply, and the
grammar that makes a reply a call when the request requires one.

A chat template that knows tools (it reads a `tools` variable, as Qwen2.5's, Hermes' or Llama 3.1's
do) renders them itself, through `apply_chat_template(tools=…)`. Any other template gets the Hermes
convention, written as messages it can render: the tools as JSON inside `<tools></tools>` in the
system message, each call an assistant makes as `<tool_call>{"name": …, "arguments": {…}}</tool_call>`
and each tool result as a user turn `<tool_response>…</tool_response>`. Either way, the calls are
read back from the reply in the `<tool_call>` form, which the Hermes-style templates also use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tunehouse.models.template import message_text, render_chat_prompt

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
SYSTEM_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
CALL_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Tool:
    """A function the model may call (OpenAI's `tools[i].function`)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: dict(NO_PARAMETERS))

    def to_openai(self) -> dict[str, Any]:
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text


def template_knows_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a `tools` list itself."""
    template = tokenizer.chat_template
    return isinstance(template, str) and "tools" in template


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]], tools: list[Tool]) -> str:
    """The prompt for the next assistant turn, with `tools` offered and past calls and results shown."""
    if template_knows_tools(tokenizer):
        return tokenizer.apply_chat_template(
            [_template_message(m) for m in messages],
            tools=[tool.to_openai() for tool in tools] or None,
            add_generation_prompt=True,
            tokenize=False,
        )
    return render_chat_prompt(tokenizer, hermes_messages(messages, tools))


def _arguments_object(arguments: Any) -> Any:
    """Arguments as an object where they are JSON text (templates write them with `tojson`)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _calls_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An assistant message's calls as `{"name", "arguments"}` (tool calls or a legacy function call)."""
    tool_calls = message.get("tool_calls")
    listed = (
        [call.get("function") for call in tool_calls if isinstance(call, dict)] if isinstance(tool_calls, list) else []
    )
    calls: list[dict[str, Any]] = [call for call in listed if isinstance(call, dict)]
    if isinstance(message.get("function_call"), dict):
        calls.append(message["function_call"])
    return [{"name": call.get("name"), "arguments": _arguments_object(call.get("arguments", {}))} for call in calls]


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as Hugging Face tool templates read it: calls with arguments as objects."""
    out = {**message, "role": "system" if message.get("role") == "developer" else message.get("role")}
    calls = _calls_of(message)
    if calls:
        out["tool_calls"] = [{"type": "function", "function": call} for call in calls]
        out.pop("function_call", None)
    if message.get("role") == "function":
        out["role"] = "tool"
    out["content"] = message_text(message.get("content"))
    return out


def hermes_messages(messages: list[dict[str, Any]], tools: list[Tool]) -> list[dict[str, Any]]:
    """Messages any template renders, the tools and calls written in the Hermes convention."""
    out: list[dict[str, Any]] = []
    if tools:
        listed = "\n".join(json.dumps(tool.to_openai(), ensure_ascii=False) for tool in tools)
        system = SYSTEM_PROMPT.format(tools=listed)
        first = messages[0] if messages else {}
        if first.get("role") in ("system", "developer"):
            system = f"{message_text(first.get('content'))}\n\n{system}"
            messages = messages[1:]
        out.append({"role": "system", "content": system})
    for message in messages:
        role = message.get("role")
        if role in ("tool", "function"):
            response = f"<tool_response>\n{message_text(message.get('content'))}\n</tool_response>"
            previous = out[-1] if out else {}
            if previous.get("role") == "user" and str(previous.get("content")).startswith("<tool_response>"):
                out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n{response}"}
            else:
                out.append({"role": "user", "content": response})
            continue
        calls = _calls_of(message) if role == "assistant" else []
        if calls:
            text = message_text(message.get("content"))
            written = [f"{CALL_OPEN}\n{json.dumps(call, ensure_ascii=False)}\n{CALL_CLOSE}" for call in calls]
            out.append({"role": "assistant", "content": "\n".join(([text] if text else []) + written)})
        else:
            out.append({"role": role, "content": message.get("content")})
    return out


def _parse_call(body: str, tools: list[Tool]) -> ToolCall | None:
    """One call from the JSON between the tags; None unless it names an offered tool."""
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or call.get("name") not in {tool.name for tool in tools}:
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _arguments_object(arguments)
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name=call["name"], arguments=json.dumps(arguments, ensure_ascii=False))


class CallReader:
    """Splits a reply, as it arrives, into content and tool calls: text outside `<tool_call>` tags is
    content (what may still turn into a tag is held back), each complete call is handed out whole.
    A call that does not parse, or names a tool not offered, stays content."""

    def __init__(self, tools: list[Tool]) -> None:
        self.tools = tools
        self._pending = ""
        self._in_call = False

    def feed(self, text: str) -> list[str | ToolCall]:
        """What `text` completes: content pieces and calls, in order."""
        self._pending += text
        out: list[str | ToolCall] = []
        while True:
            if self._in_call:
                end = self._pending.find(CALL_CLOSE)
                if end < 0:
                    return out
                body, self._pending = self._pending[:end], self._pending[end + len(CALL_CLOSE) :]
                self._in_call = False
                out.append(_parse_call(body, self.tools) or f"{CALL_OPEN}{body}{CALL_CLOSE}")
                continue
            start = self._pending.find(CALL_OPEN)
            if start >= 0:
                if start:
                    out.append(self._pending[:start])
                self._pending, self._in_call = self._pending[start + len(CALL_OPEN) :], True
                continue
            keep = _tag_prefix_length(self._pending)
            if len(self._pending) > keep:
                out.append(self._pending[: len(self._pending) - keep])
                self._pending = self._pending[len(self._pending) - keep :]
            return out

    def finish(self) -> list[str | ToolCall]:
        """The rest once the reply is over: a call whose closing tag never came still counts if it parses."""
        rest, self._pending = self._pending, ""
        if not self._in_call:
            return [rest] if rest else []
        self._in_call = False
        return [_parse_call(rest, self.tools) or f"{CALL_OPEN}{rest}"]


def _tag_prefix_length(text: str) -> int:
    """The length of the longest end of `text` that begins `<tool_call>`."""
    for length in range(min(len(text), len(CALL_OPEN) - 1), 0, -1):
        if CALL_OPEN.startswith(text[-length:]):
            return length
    return 0


def split_reply(text: str, tools: list[Tool]) -> tuple[str | None, list[ToolCall]]:
    """A whole reply's content (None when only calls remain) and its tool calls."""
    reader = CallReader(tools)
    parts = reader.feed(text) + reader.finish()
    calls = [part for part in parts if isinstance(part, ToolCall)]
    content = "".join(part for part in parts if isinstance(part, str))
    if calls:
        content = content.strip()
    return content or (None if calls else content), calls


def tags_are_tokens(tokenizer: Any) -> bool:
    """Whether `<tool_call>` and `</tool_call>` are tokens of their own (Qwen2.5's), not text."""
    added = tokenizer.get_added_vocab()
    return CALL_OPEN in added and CALL_CLOSE in added


def call_grammar_lark(
    tools: list[Tool], *, free_text: bool = False, reply: dict[str, Any] | None = None, tag_tokens: bool = False
) -> str:
    """Lark (llguidance's dialect) for tool calls in the `<tool_call>` form, each call's arguments
    matching its tool's parameters, the JSON spaced as `json.dumps` spaces it.

    Without `free_text`: the reply is one call (or, given `reply`, JSON matching that schema instead).
    With it: any text, in which the calls the model chooses to make must be well formed; the call
    grammar starts where the model writes `<tool_call>` (a lazy lexeme), so free text costs nothing.
    `tag_tokens`: the tags are special tokens of the tokenizer, referred to as such.
    """
    open_tag = CALL_OPEN if tag_tokens else json.dumps(CALL_OPEN)
    close_tag = CALL_CLOSE if tag_tokens else json.dumps(CALL_CLOSE)
    rules = []
    for index, tool in enumerate(tools):
        head = json.dumps('\n{"name": ' + json.dumps(tool.name) + ', "arguments": ')
        arguments = json.dumps({**tool.parameters, "x-guidance": CALL_JSON_OPTIONS})
        body = f"{head} %json {arguments} {json.dumps(chr(125) + chr(10))} {close_tag}"
        if not free_text:
            rules.append(f"call_{index}: {open_tag} {body}")
        elif tag_tokens:
            rules.append(f"call_{index}: TEXT {open_tag} {body}")
        else:
            rules += [f"call_{index}_open[lazy]: TEXT {open_tag}", f"call_{index}: call_{index}_open {body}"]
    calls = " | ".join(f"call_{index}" for index in range(len(tools)))
    if free_text:
        start = f"%llguidance {{}}\nstart: ({calls})* TEXT\nTEXT: /(.|\\n)*/"
    elif reply is not None:
        start = f"start: {calls} | reply\nreply: %json {json.dumps({**reply, 'x-guidance': CALL_JSON_OPTIONS})}"
    else:
        start = f"start: {calls}"
    return "\n".join([start, *rules]) + "\n"
