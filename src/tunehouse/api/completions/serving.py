"""Legacy completions: raw text in, raw text out — the prompt/completion format of seed 003.

A prompt given as token ids reaches the engine as those ids, untouched; `echo` returns its text.
With `logprobs`, each choice reports its tokens' log-probabilities, the prompt's too with `echo`:
lm-evaluation-harness scores a multiple-choice answer by sending context + answer with `echo` and
`max_tokens` 0 or 1, and reading the answer tokens' log-probabilities.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from tunehouse.api.chat.protocol import PromptTokensDetails, Usage
from tunehouse.api.completions.protocol import Completion, CompletionChoice, CompletionRequest
from tunehouse.api.logprobs import CompletionLogprobs, completion_logprobs
from tunehouse.api.sampling import logit_bias_ids, response_header, sampling_params
from tunehouse.api.sse import first_taken
from tunehouse.errors import InvalidRequest
from tunehouse.serve.engine import Engine, Generation, ModelHandle, SamplingParams, ScoredPrompt
from tunehouse.serve.logprobs import TokenLogprob

DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class _Prompt:
    token_ids: list[int]
    text: str  # what `echo` returns: the prompt as sent, or its token ids decoded


def _prompt(handle: ModelHandle, prompt: str | list[int]) -> _Prompt:
    """One prompt: text is tokenized, token ids pass through as they are."""
    token_ids = handle.encode(prompt) if isinstance(prompt, str) else list(prompt)
    handle.check_prompt(token_ids, param="prompt")
    return _Prompt(token_ids, prompt if isinstance(prompt, str) else handle.decode(token_ids))


def _prompts(handle: ModelHandle, prompt: str | list[str] | list[int] | list[list[int]]) -> list[_Prompt]:
    """The request's prompts: a string, strings, a token id array, or token id arrays."""
    if isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt)):
        prompt = [prompt]  # type: ignore[assignment]
    if not prompt:
        raise InvalidRequest("Invalid 'prompt': it is empty; give text or token ids.", param="prompt")
    return [_prompt(handle, p) for p in prompt]  # type: ignore[arg-type]


def _prepare(engine: Engine, request: CompletionRequest) -> tuple[ModelHandle, list[_Prompt], SamplingParams]:
    """Resolve the model once and tokenize every prompt, so a bad one fails before any generation."""
    handle = engine.open(request.model)
    params = sampling_params(
        max_tokens=DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        seed=request.seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        logit_bias=logit_bias_ids(request.logit_bias, handle.weights.vocab_size),
    )
    params = replace(params, logprobs=request.logprobs, prompt_logprobs=request.echo and request.logprobs is not None)
    return handle, _prompts(handle, request.prompt), params


def _choice_prompts(prompts: list[_Prompt], n: int) -> list[list[int]]:
    """The token ids of each choice, in choice order: each prompt `n` times."""
    return [prompt.token_ids for prompt in prompts for _ in range(n)]


def _completion_offset(request: CompletionRequest, prompt: _Prompt) -> int:
    """Where the completion starts in a choice's text: after the prompt when it is echoed."""
    return len(prompt.text) if request.echo else 0


def _choice_logprobs(
    handle: ModelHandle, request: CompletionRequest, prompt: _Prompt, result: Generation
) -> CompletionLogprobs | None:
    if request.logprobs is None:
        return None
    completion = (result.logprobs or [], _completion_offset(request, prompt))
    if request.echo:
        return completion_logprobs(handle.spelling, (result.prompt_logprobs or [], 0), completion)
    return completion_logprobs(handle.spelling, completion)


async def create_completion(engine: Engine, request: CompletionRequest) -> dict[str, Any]:
    handle, prompts, params = await engine.prepare(_prepare, engine, request)
    results = await engine.generate_async(handle, _choice_prompts(prompts, request.n), params)
    choices = []
    for index, result in enumerate(results):
        prompt = prompts[index // request.n]
        text = prompt.text + result.text if request.echo else result.text
        logprobs = _choice_logprobs(handle, request, prompt, result)
        choices.append(CompletionChoice(index=index, text=text, finish_reason=result.finish_reason, logprobs=logprobs))
    prompt_tokens = sum(len(prompt.token_ids) for prompt in prompts)
    completion_tokens = sum(result.completion_tokens for result in results)
    cached_tokens = sum(result.cached_tokens for result in results[:: request.n])  # a prompt's choices share it
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
    )
    return Completion(**response_header("cmpl-", request.model), choices=choices, usage=usage).model_dump()


async def stream_completion(engine: Engine, request: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
    """Chunks: each choice's echoed prompt (with its tokens' log-probabilities when asked), its text
    deltas (each with its tokens'), a finish chunk per choice, then usage if asked."""
    handle, prompts, params = await engine.prepare(_prepare, engine, request)
    events = await first_taken(engine.stream_async(handle, _choice_prompts(prompts, request.n), params))
    base = response_header("cmpl-", request.model)
    include_usage = bool((request.stream_options or {}).get("include_usage"))

    def chunk(index: int, text: str, finish: str | None, records: list[TokenLogprob], offset: int) -> dict[str, Any]:
        logprobs = None if request.logprobs is None else completion_logprobs(handle.spelling, (records, offset))
        choice = CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=logprobs)
        return Completion(**base, choices=[choice]).model_dump(exclude={"usage"})

    async def generate() -> AsyncGenerator[dict[str, Any], None]:
        completion_tokens, cached_tokens, started = 0, 0, -1
        try:
            async for index, item in events:
                prompt = prompts[index // request.n]
                if index > started and request.echo:  # a choice's first chunk echoes its prompt
                    records = item.logprobs if isinstance(item, ScoredPrompt) else []
                    yield chunk(index, prompt.text, None, records, 0)
                started = index
                if isinstance(item, Generation):
                    completion_tokens += item.completion_tokens
                    if index % request.n == 0:  # a prompt's choices share it
                        cached_tokens += item.cached_tokens
                    yield chunk(index, "", item.finish_reason, [], 0)
                elif not isinstance(item, ScoredPrompt) and (item.text or item.logprobs):
                    yield chunk(index, item.text, None, item.logprobs, _completion_offset(request, prompt))
        finally:
            await events.aclose()  # a client that hung up stops the generation
        if include_usage:
            prompt_tokens = sum(len(prompt.token_ids) for prompt in prompts)
            usage = Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
                prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
            )
            yield Completion(**base, choices=[], usage=usage).model_dump()

    return generate()
