"""Wire shapes of `/chat/completions` (OpenAI's `CreateChatCompletionRequest`/`Response`/`StreamResponse`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from tunehouse.api.logprobs import ChatLogprobs
from tunehouse.api.sampling import SamplingRequest


class ChatCompletionRequest(SamplingRequest):
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)  # needs `logprobs: true`, as OpenAI's does
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None  # token id → bias, -100 to 100
    response_format: dict[str, Any] | None = None  # text | json_object | json_schema (serve/structured.py)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # none | auto | required | {"type": "function", …}
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None  # the legacy form of `tools`
    function_call: str | dict[str, Any] | None = None  # the legacy form of `tool_choice`


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens the engine's prefix cache already held


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None  # legacy `functions` requests get their call here

    @model_serializer(mode="wrap")
    def _calls_only_when_made(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`tool_calls` and `function_call` appear when there are calls, as OpenAI's (its schema has no null)."""
        body: dict[str, Any] = handler(self)
        return {k: v for k, v in body.items() if v is not None or k not in ("tool_calls", "function_call")}


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: str
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A streamed tool call: its first piece has the id, type and name, later ones argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionCallDelta | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None

    def to_wire(self) -> dict[str, Any]:
        """Deltas carry only what changed: unset `role`/`content`/tool call fields are omitted, not null."""
        body = self.model_dump()
        for choice in body["choices"]:
            choice["delta"] = _without_nulls(choice["delta"])
        return body


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
