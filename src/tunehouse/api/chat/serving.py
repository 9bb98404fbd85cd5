"""Chat completions: render messages with the model's own chat template, generate, shape the reply."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from tunehouse.api.chat.formats import DeltaReader, ReplyFormat, reply_format, reply_message, uses_tools
from tunehouse.api.chat.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    PromptTokensDetails,
    Usage,
)
from tunehouse.api.logprobs import chat_logprobs
from tunehouse.api.sampling import logit_bias_ids, response_header, sampling_params
from tunehouse.api.sse import first_taken
from tunehouse.errors import InvalidRequest
from tunehouse.models.template import render_chat_prompt
from tunehouse.serve.engine import Engine, Generation, ModelHandle, SamplingParams, ScoredPrompt
from tunehouse.serve.structured import grammar_constraint
from tunehouse.serve.tools import render_prompt

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
        calls = message.get("tool_calls")
        if calls is not None and not (
            isinstance(calls, list)
            and all(
                isinstance(c, dict) and isinstance(c.get("function"), dict) and c["function"].get("name") for c in calls
            )
        ):
            raise InvalidRequest(
                f"messages[{index}].tool_calls must be a list of {{'id', 'type', 'function': {{'name', 'arguments'}}}}.",
                param=f"messages[{index}].tool_calls",
            )


def _logprobs(request: ChatCompletionRequest) -> int | None:
    """How many alternatives each reply token reports (`top_logprobs`), or None without `logprobs`."""
    if not request.logprobs:
        if request.top_logprobs is not None:
            raise InvalidRequest("'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs")
        return None
    return request.top_logprobs or 0


def _prepare(
    engine: Engine, request: ChatCompletionRequest
) -> tuple[ModelHandle, list[int], SamplingParams, ReplyFormat]:
    """Resolve the model once, render the messages (and tools) with its chat template and tokenize
    them; the reply's grammar, when it has one, is compiled here, so a bad schema fails first."""
    _check_messages(request.messages)
    logprobs = _logprobs(request)
    fmt = reply_format(request)
    handle = engine.open(request.model)
    if uses_tools(request.messages, fmt):
        prompt = render_prompt(handle.tokenizer, request.messages, fmt.tools)
    else:
        prompt = render_chat_prompt(handle.tokenizer, request.messages)
    prompt_ids = handle.encode(prompt)
    handle.check_prompt(prompt_ids, param="messages")
    params = sampling_params(
        max_tokens=request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        seed=request.seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        logit_bias=logit_bias_ids(request.logit_bias, handle.weights.vocab_size),
    )
    grammar = fmt.grammar(handle.tokenizer)
    constraint = None if grammar is None else grammar_constraint(handle.tokenizer, grammar)
    return handle, prompt_ids, replace(params, logprobs=logprobs, constraint=constraint), fmt


async def create_chat_completion(engine: Engine, request: ChatCompletionRequest) -> dict[str, Any]:
    handle, prompt_ids, params, fmt = await engine.prepare(_prepare, engine, request)
    results = await engine.generate_async(handle, [prompt_ids] * request.n, params)
    choices = []
    for index, result in enumerate(results):
        message, finish_reason = reply_message(result.text, result.finish_reason, fmt)
        logprobs = None if result.logprobs is None else chat_logprobs(handle.spelling, result.logprobs)
        choices.append(Choice(index=index, message=message, finish_reason=finish_reason, logprobs=logprobs))
    completion_tokens = sum(result.completion_tokens for result in results)
    usage = Usage(
        prompt_tokens=len(prompt_ids),
        completion_tokens=completion_tokens,
        total_tokens=len(prompt_ids) + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=results[0].cached_tokens),
    )
    return ChatCompletion(**response_header("chatcmpl-", request.model), choices=choices, usage=usage).model_dump()


async def stream_chat_completion(engine: Engine, request: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
    """Chunks: a role delta, content deltas (each with its tokens' log-probabilities when asked) and
    tool call deltas, a finish chunk per choice, then usage if asked."""
    handle, prompt_ids, params, fmt = await engine.prepare(_prepare, engine, request)
    events = await first_taken(engine.stream_async(handle, [prompt_ids] * request.n, params))
    base = response_header("chatcmpl-", request.model)
    include_usage = bool((request.stream_options or {}).get("include_usage"))

    async def generate() -> AsyncGenerator[dict[str, Any], None]:
        completion_tokens, cached_tokens, started = 0, 0, -1
        reader = DeltaReader(fmt)
        try:
            async for index, item in events:
                if index > started:  # a choice's first chunk says who speaks
                    started, reader = index, DeltaReader(fmt)
                    yield ChatCompletionChunk(
                        **base, choices=[ChunkChoice(index=index, delta=Delta(role="assistant", content=""))]
                    ).to_wire()
                if isinstance(item, Generation):
                    completion_tokens += item.completion_tokens
                    cached_tokens = cached_tokens if index else item.cached_tokens  # the choices share one prompt
                    deltas, finish_reason = reader.finish(item.finish_reason)
                    for delta in deltas:
                        yield ChatCompletionChunk(**base, choices=[ChunkChoice(index=index, delta=delta)]).to_wire()
                    yield ChatCompletionChunk(
                        **base, choices=[ChunkChoice(index=index, delta=Delta(), finish_reason=finish_reason)]
                    ).to_wire()
                elif not isinstance(item, ScoredPrompt) and (item.text or item.logprobs):
                    logprobs = None if params.logprobs is None else chat_logprobs(handle.spelling, item.logprobs)
                    deltas = reader.feed(item.text) or ([Delta(content="")] if logprobs else [])
                    for number, delta in enumerate(deltas):  # the tokens' records ride on the first
                        choice = ChunkChoice(index=index, delta=delta, logprobs=logprobs if number == 0 else None)
                        yield ChatCompletionChunk(**base, choices=[choice]).to_wire()
        finally:
            await events.aclose()  # a client that hung up stops the generation
        if include_usage:
            usage = Usage(
                prompt_tokens=len(prompt_ids),
                completion_tokens=completion_tokens,
                total_tokens=len(prompt_ids) + completion_tokens,
                prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
            )
            yield ChatCompletionChunk(**base, choices=[], usage=usage).to_wire()

    return generate()
