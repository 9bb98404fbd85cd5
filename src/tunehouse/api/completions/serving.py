"""Legacy completions: raw text in, raw text out — the prompt/completion format of seed 003.

A prompt given as token ids reaches the engine as those ids, untouched; `echo` returns its text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tunehouse.api.chat.protocol import Usage
from tunehouse.api.completions.protocol import Completion, CompletionChoice, CompletionRequest
from tunehouse.api.sampling import response_header, sampling_params, started
from tunehouse.errors import InvalidRequest
from tunehouse.serve.engine import Engine, Generation, ModelHandle, SamplingParams

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
        max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        seed=request.seed,
    )
    return handle, _prompts(handle, request.prompt), params


def create_completion(engine: Engine, request: CompletionRequest) -> dict[str, Any]:
    handle, prompts, params = _prepare(engine, request)
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for p_index, prompt in enumerate(prompts):
        for k in range(request.n):
            result = engine.generate(handle, prompt.token_ids, params)
            params.seed = None
            text = prompt.text + result.text if request.echo else result.text
            choices.append(
                CompletionChoice(index=p_index * request.n + k, text=text, finish_reason=result.finish_reason)
            )
            completion_tokens += result.completion_tokens
        prompt_tokens += len(prompt.token_ids)
    usage = Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )
    return Completion(
        **response_header("cmpl-", request.model),
        choices=choices,
        usage=usage,
    ).model_dump()


def stream_completion(engine: Engine, request: CompletionRequest) -> Iterator[dict[str, Any]]:
    handle, prompts, params = _prepare(engine, request)
    first = started(engine.stream(handle, prompts[0].token_ids, params))
    base = response_header("cmpl-", request.model)
    include_usage = bool((request.stream_options or {}).get("include_usage"))

    def chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
        return Completion(**base, choices=[CompletionChoice(index=index, text=text, finish_reason=finish)]).model_dump(
            exclude={"usage"}
        )

    def generate() -> Iterator[dict[str, Any]]:
        prompt_tokens, completion_tokens = 0, 0
        for p_index, prompt in enumerate(prompts):
            for k in range(request.n):
                index = p_index * request.n + k
                if request.echo:
                    yield chunk(index, prompt.text, None)
                items = first if index == 0 else engine.stream(handle, prompt.token_ids, params)
                for item in items:
                    if isinstance(item, Generation):
                        completion_tokens += item.completion_tokens
                        yield chunk(index, "", item.finish_reason)
                    elif item:
                        yield chunk(index, item, None)
                params.seed = None
            prompt_tokens += len(prompt.token_ids)
        if include_usage:
            usage = Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            yield Completion(**base, choices=[], usage=usage).model_dump()

    return generate()
