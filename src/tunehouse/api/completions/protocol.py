"""Wire shapes of the legacy `/completions` (OpenAI's `CreateCompletionRequest`/`Response`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from tunehouse.api.chat.protocol import Usage
from tunehouse.api.logprobs import CompletionLogprobs
from tunehouse.api.sampling import SamplingRequest


class CompletionRequest(SamplingRequest):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]  # text, texts, token ids, or lists of token ids
    max_tokens: int | None = Field(default=16, ge=0)  # 0 with `echo` and `logprobs`: score the prompt only
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = Field(default=1, ge=1, le=128)
    stop: str | list[str] | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)  # alternatives per token; OpenAI allows up to 5
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str
