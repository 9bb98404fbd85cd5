"""Wire shapes of the legacy `/completions` (OpenAI's `CreateCompletionRequest`/`Response`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from tunehouse.api.chat.protocol import Usage
from tunehouse.api.logprobs import CompletionLogprobs
from tunehouse.api.sampling import NO_EFFECT, SamplingRequest


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
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None  # token id → bias, -100 to 100

    no_effect: ClassVar[dict[str, Callable[[Any, dict[str, Any]], bool]]] = {
        **NO_EFFECT,
        "best_of": lambda value, body: value in (1, body.get("n") or 1),  # the best of n is all n: no choosing
        "suffix": lambda value, body: value == "",
    }


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
