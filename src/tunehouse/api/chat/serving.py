"""Chat completions: render messages with the model's own chat template, generate, shape the reply."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from tunehouse.api.chat.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ResponseMessage,
    Usage,
)
from tunehouse.api.logprobs import chat_logprobs
from tunehouse.api.metrics import measured, measured_stream
from tunehouse.api.sampling import response_header, sampling_params
from tunehouse.api.sse import first_taken
from tunehouse.errors import InvalidRequest
from tunehouse.models.template import render_chat_prompt
from tunehouse.serve.engine import Engine, Generation, ModelHandle, SamplingParams, ScoredPrompt

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
DEFAULT_MAX_TOKENS = 512


def _check_messages(messages: list[dict[str, Any]]) -> None:
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"Invalid value for messages[{index}].role: {role!r}. Expected one of {', '.join(sorted(ROLES))}.",
                param=f"messages[{index}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"messages[{index}].content must be a string or a list of parts.", param=f"messages[{index}].content"
            )


def _logprobs(request: ChatCompletionRequest) -> int | None:
    """How many alternatives each reply token reports (`top_logprobs`), or None without `logprobs`."""
    if not request.logprobs:
        if request.top_logprobs is not None:
            raise InvalidRequest("'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
        return None
    return request.top_logprobs or 0


def _prepare(engine: Engine, request: ChatCompletionRequest) -> tuple[ModelHandle, list[int], SamplingParams]:
    """Resolve the model once, render the messages with its chat template and tokenize them."""
    _check_messages(request.messages)
    logprobs = _logprobs(request)
    handle = engine.open(request.model)
    prompt_ids = handle.encode(render_chat_prompt(handle.tokenizer, request.messages))
    handle.check_prompt(prompt_ids, param="messages")
    params = sampling_params(
        max_tokens=request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        seed=request.seed,
    )
    return handle, prompt_ids, replace(params, logprobs=logprobs)


async def create_chat_completion(engine: Engine, request: ChatCompletionRequest) -> dict[str, Any]:
    handle, prompt_ids, params = await engine.prepare(_prepare, engine, request)
    results = await measured(engine.generate_async(handle, [prompt_ids] * request.n, params))
    choices = [
        Choice(
            index=index,
            message=ResponseMessage(content=result.text),
            finish_reason=result.finish_reason,
            logprobs=None if result.logprobs is None else chat_logprobs(handle.spelling, result.logprobs),
        )
        for index, result in enumerate(results)
    ]
    completion_tokens = sum(result.completion_tokens for result in results)
    usage = Usage(
        prompt_tokens=len(prompt_ids),
        completion_tokens=completion_tokens,
        total_tokens=len(prompt_ids) + completion_tokens,
    )
    return ChatCompletion(**response_header("chatcmpl-", request.model), choices=choices, usage=usage).model_dump()


async def stream_chat_completion(engine: Engine, request: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
    """Chunks: a role delta, content deltas (each with its tokens' log-probabilities when asked), a
    finish chunk per choice, then usage if asked."""
    handle, prompt_ids, params = await engine.prepare(_prepare, engine, request)
    events = await first_taken(measured_stream(engine.stream_async(handle, [prompt_ids] * request.n, params)))
    base = response_header("chatcmpl-", request.model)
    include_usage = bool((request.stream_options or {}).get("include_usage"))

    async def generate() -> AsyncGenerator[dict[str, Any], None]:
        completion_tokens, started = 0, -1
        try:
            async for index, item in events:
                if index > started:  # a choice's first chunk says who speaks
                    started = index
                    yield ChatCompletionChunk(
                        **base, choices=[ChunkChoice(index=index, delta=Delta(role="assistant", content=""))]
                    ).to_wire()
                if isinstance(item, Generation):
                    completion_tokens += item.completion_tokens
                    yield ChatCompletionChunk(
                        **base, choices=[ChunkChoice(index=index, delta=Delta(), finish_reason=item.finish_reason)]
                    ).to_wire()
                elif not isinstance(item, ScoredPrompt) and (item.text or item.logprobs):
                    logprobs = None if params.logprobs is None else chat_logprobs(handle.spelling, item.logprobs)
                    choice = ChunkChoice(index=index, delta=Delta(content=item.text), logprobs=logprobs)
                    yield ChatCompletionChunk(**base, choices=[choice]).to_wire()
        finally:
            await events.aclose()  # a client that hung up stops the generation
        if include_usage:
            usage = Usage(
                prompt_tokens=len(prompt_ids),
                completion_tokens=completion_tokens,
                total_tokens=len(prompt_ids) + completion_tokens,
            )
            yield ChatCompletionChunk(**base, choices=[], usage=usage).to_wire()

    return generate()
