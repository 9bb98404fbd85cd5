"""What a chat request asks its reply to be: free text, JSON (`response_format`), or tool calls
(`tools`/`tool_choice`, or the legacy `functions`/`function_call`) — checked once, each problem a
400 naming its field, and turned into the tools to offer, whether to read calls from the reply, and
the grammar (`serve/structured.py`) that the reply must follow."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tunehouse.api.chat.protocol import (
    ChatCompletionRequest,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    ResponseMessage,
    ToolCall,
    ToolCallDelta,
)
from tunehouse.errors import InvalidRequest
from tunehouse.ids import new_id
from tunehouse.serve.structured import ANY_OBJECT, json_schema_grammar, lark_grammar
from tunehouse.serve.tools import (
    NO_PARAMETERS,
    CallReader,
    Tool,
    call_grammar_lark,
    split_reply,
    tags_are_tokens,
)
from tunehouse.serve.tools import ToolCall as ServedCall

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ReplyFormat:
    tools: list[Tool] = field(default_factory=list)
    """Offered to the model in the prompt."""
    read_calls: bool = False
    """Tool calls are read out of the reply into `tool_calls` (or `function_call`)."""
    legacy: bool = False
    """The request used `functions`: a call is answered as `function_call`, OpenAI's old way."""
    single_call: bool = False
    """`parallel_tool_calls: false`, or legacy functions: at most one call per reply."""
    schema: dict[str, Any] | None = None
    """The JSON schema a text reply must match (`response_format`); None: any text."""
    forced: list[Tool] = field(default_factory=list)
    """The tools one of which the reply must call (`required` or a named function)."""

    def grammar(self, tokenizer: Any) -> str | None:
        """What the reply must match (llguidance), for the model's tokenizer; None: anything.

        With tools offered and no call forced, the model writes what it likes, but a call it starts
        must be well formed with arguments that match the tool's parameters (as OpenAI's `strict`)."""
        tag_tokens = tags_are_tokens(tokenizer)
        if self.forced:
            return lark_grammar(call_grammar_lark(self.forced, tag_tokens=tag_tokens), param=self.source)
        if self.read_calls and self.schema is not None:  # JSON or a call, and nothing else
            lark = call_grammar_lark(self.tools, reply=self.schema, tag_tokens=tag_tokens)
            return lark_grammar(lark, param=self.source)
        if self.read_calls:
            lark = call_grammar_lark(self.tools, free_text=True, tag_tokens=tag_tokens)
            return lark_grammar(lark, param=self.source)
        return None if self.schema is None else json_schema_grammar(self.schema, param="response_format")

    @property
    def source(self) -> str:
        return "functions" if self.legacy else "tools"


def _tools(request: ChatCompletionRequest) -> tuple[list[Tool], str]:
    """The offered functions and the field they came in (`tools` or `functions`)."""
    if request.tools is not None and request.functions is not None:
        raise InvalidRequest("Give 'tools' or the legacy 'functions', not both.", param="functions")
    if request.functions is not None:
        return [_tool(f, f"functions[{i}]") for i, f in enumerate(request.functions)], "functions"
    tools = []
    for index, tool in enumerate(request.tools or []):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequest(
                f"Invalid 'tools[{index}].type': tunehouse serves function tools only.", param=f"tools[{index}].type"
            )
        if not isinstance(tool.get("function"), dict):
            raise InvalidRequest(f"Missing 'tools[{index}].function'.", param=f"tools[{index}].function")
        tools.append(_tool(tool["function"], f"tools[{index}].function"))
    names = [tool.name for tool in tools]
    if len(set(names)) < len(names):
        raise InvalidRequest("Each tool needs its own name.", param="tools")
    return tools, "tools"


def _tool(function: dict[str, Any], where: str) -> Tool:
    name = function.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidRequest(
            f"Invalid '{where}.name': {name!r}; use 1 to 64 letters, digits, underscores or dashes.",
            param=f"{where}.name",
        )
    parameters = function.get("parameters", NO_PARAMETERS)
    if not isinstance(parameters, dict):
        raise InvalidRequest(
            f"Invalid '{where}.parameters': it must be a JSON schema object.", param=f"{where}.parameters"
        )
    description = function.get("description") or ""
    return Tool(name=name, description=str(description), parameters=parameters)


def _choice(request: ChatCompletionRequest, tools: list[Tool], source: str) -> str | None:
    """'none', 'auto', 'required' or the name of the function that must be called."""
    param = "function_call" if source == "functions" else "tool_choice"
    choice = request.function_call if source == "functions" else request.tool_choice
    if source == "functions" and request.tool_choice is not None:
        raise InvalidRequest("Use 'function_call' with the legacy 'functions'.", param="tool_choice")
    if choice is None:
        return "auto" if tools else None
    if not tools:
        raise InvalidRequest(f"'{param}' is only allowed when '{source}' are given.", param=param)
    if isinstance(choice, str):
        allowed = ("none", "auto") if source == "functions" else ("none", "auto", "required")
        if choice not in allowed:
            raise InvalidRequest(f"Invalid '{param}': {choice!r}; expected one of {', '.join(allowed)}.", param=param)
        return choice
    if source == "tools" and (choice.get("type") != "function" or not isinstance(choice.get("function"), dict)):
        raise InvalidRequest(
            f'Invalid \'{param}\': expected {{"type": "function", "function": {{"name": …}}}}.', param=param
        )
    name = choice.get("name") if source == "functions" else choice["function"].get("name")
    if name not in {tool.name for tool in tools}:
        raise InvalidRequest(f"Invalid '{param}': no function named {name!r} was given.", param=param)
    return str(name)


def _reply_schema(request: ChatCompletionRequest) -> dict[str, Any] | None:
    """The JSON schema the text reply must match (`response_format`); None for free text."""
    response_format = request.response_format
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return dict(ANY_OBJECT)
    if kind != "json_schema":
        raise InvalidRequest(
            f"Invalid 'response_format.type': {kind!r}; expected text, json_object or json_schema.",
            param="response_format.type",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not NAME.match(spec["name"]):
        raise InvalidRequest(
            "Invalid 'response_format.json_schema.name': give a name of 1 to 64 letters, digits, underscores or dashes.",
            param="response_format.json_schema.name",
        )
    schema = spec.get("schema", ANY_OBJECT)
    if not isinstance(schema, dict):
        raise InvalidRequest(
            "Invalid 'response_format.json_schema.schema': it must be a JSON schema object.",
            param="response_format.json_schema.schema",
        )
    return schema


def reply_format(request: ChatCompletionRequest) -> ReplyFormat:
    """The request's ReplyFormat; InvalidRequest naming the field at fault."""
    tools, source = _tools(request)
    choice = _choice(request, tools, source)
    schema = _reply_schema(request)
    legacy = source == "functions"
    single = legacy or request.parallel_tool_calls is False
    if schema is not None:
        json_schema_grammar(schema, param="response_format")  # names the field if it cannot be enforced
    if choice in (None, "none"):
        return ReplyFormat(legacy=legacy, schema=schema)
    for index, tool in enumerate(tools):  # each schema on its own, so the 400 names the one at fault
        where = f"functions[{index}]" if legacy else f"tools[{index}].function"
        json_schema_grammar(tool.parameters, param=f"{where}.parameters")
    forced = [] if choice == "auto" else [tool for tool in tools if choice in ("required", tool.name)]
    return ReplyFormat(tools=tools, read_calls=True, legacy=legacy, single_call=single, schema=schema, forced=forced)


def uses_tools(messages: list[dict[str, Any]], fmt: ReplyFormat) -> bool:
    """Whether the prompt needs tool rendering: tools offered, or calls and results in the history."""
    return bool(fmt.tools) or any(
        m.get("tool_calls") or m.get("function_call") or m.get("role") in ("tool", "function") for m in messages
    )


def _finish(finish_reason: str, calls: int, fmt: ReplyFormat) -> str:
    """A reply that stopped by itself after calling tools finishes with `tool_calls` (`function_call`)."""
    if not calls or finish_reason != "stop":
        return finish_reason
    return "function_call" if fmt.legacy else "tool_calls"


def reply_message(text: str, finish_reason: str, fmt: ReplyFormat) -> tuple[ResponseMessage, str]:
    """A whole reply as OpenAI's message (its calls in `tool_calls` or `function_call`) and finish reason."""
    if not fmt.read_calls:
        return ResponseMessage(content=text), finish_reason
    content, calls = split_reply(text, fmt.tools)
    calls = calls[:1] if fmt.single_call else calls
    finish_reason = _finish(finish_reason, len(calls), fmt)
    if not calls:
        return ResponseMessage(content=content), finish_reason
    if fmt.legacy:
        return ResponseMessage(content=content, function_call=FunctionCall(**vars(calls[0]))), finish_reason
    tool_calls = [ToolCall(id=new_id("call_"), function=FunctionCall(**vars(call))) for call in calls]
    return ResponseMessage(content=content, tool_calls=tool_calls), finish_reason


class DeltaReader:
    """One streamed choice's text turned into deltas: content as it comes, each tool call as OpenAI
    streams one (a first delta with its index, id, type and name, then one with its arguments)."""

    def __init__(self, fmt: ReplyFormat) -> None:
        self.fmt = fmt
        self.reader = CallReader(fmt.tools) if fmt.read_calls else None
        self.calls = 0

    def feed(self, text: str) -> list[Delta]:
        return self._deltas(self.reader.feed(text) if self.reader else [text])

    def finish(self, finish_reason: str) -> tuple[list[Delta], str]:
        """The deltas held back until the end, and the choice's finish reason."""
        deltas = self._deltas(self.reader.finish()) if self.reader else []
        return deltas, _finish(finish_reason, self.calls, self.fmt)

    def _deltas(self, parts: list[str | ServedCall]) -> list[Delta]:
        deltas = []
        for part in parts:
            if isinstance(part, str):
                if part:
                    deltas.append(Delta(content=part))
            elif not (self.fmt.single_call and self.calls):
                deltas += self._call(part)
                self.calls += 1
        return deltas

    def _call(self, call: ServedCall) -> list[Delta]:
        if self.fmt.legacy:
            return [
                Delta(function_call=FunctionCallDelta(name=call.name, arguments="")),
                Delta(function_call=FunctionCallDelta(arguments=call.arguments)),
            ]
        first = ToolCallDelta(
            index=self.calls,
            id=new_id("call_"),
            type="function",
            function=FunctionCallDelta(name=call.name, arguments=""),
        )
        rest = ToolCallDelta(index=self.calls, function=FunctionCallDelta(arguments=call.arguments))
        return [Delta(tool_calls=[first]), Delta(tool_calls=[rest])]
