"""Legacy completions: raw text in, raw text out — the prompt/completion format of seed 003."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tunehouse.api.chat.protocol import Usage
from tunehouse.api.completions.protocol import Completion, CompletionChoice, CompletionRequest
from tunehouse.api.sampling import response_header, sampling_params
from tunehouse.errors import InvalidRequest
from tunehouse.serve.engine import Generation, SamplingParams, get_engine


def _prompts(request: CompletionRequest, tokenizer: Any) -> list[str]:
    """The request's prompt(s) as text: a string, strings, a token array or token arrays."""
    prompt = request.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        return [""]
    if all(isinstance(p, str) for p in prompt):
        return list(prompt)  # type: ignore[arg-type]
    if all(isinstance(p, int) for p in prompt):
        return [tokenizer.decode(prompt)]
    if all(isinstance(p, list) for p in prompt):
        return [tokenizer.decode(p) for p in prompt]  # type: ignore[arg-type]
    raise InvalidRequest("prompt must be a string, a list of strings, or token id arrays.", param="prompt")


def _prepare(request: CompletionRequest) -> tuple[list[str], SamplingParams]:
    tokenizer = get_engine().tokenizer_for(request.model)
    params = sampling_params(
        max_tokens=request.max_tokens or 16,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        seed=request.seed,
    )
    return _prompts(request, tokenizer), params


def create_completion(request: CompletionRequest) -> dict[str, Any]:
    prompts, params = _prepare(request)
    engine = get_engine()
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for p_index, prompt in enumerate(prompts):
        for k in range(request.n):
            result = engine.generate(request.model, prompt, params)
            params.seed = None
            text = prompt + result.text if request.echo else result.text
            choices.append(
                CompletionChoice(index=p_index * request.n + k, text=text, finish_reason=result.finish_reason)
            )
            completion_tokens += result.completion_tokens
        prompt_tokens += result.prompt_tokens
    usage = Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )
    return Completion(
        **response_header("cmpl-", request.model),
        choices=choices,
        usage=usage,
    ).model_dump()


def stream_completion(request: CompletionRequest) -> Iterator[dict[str, Any]]:
    prompts, params = _prepare(request)
    engine = get_engine()
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
                    yield chunk(index, prompt, None)
                for item in engine.stream(request.model, prompt, params):
                    if isinstance(item, Generation):
                        completion_tokens += item.completion_tokens
                        prompt_tokens = item.prompt_tokens
                        yield chunk(index, "", item.finish_reason)
                    elif item:
                        yield chunk(index, item, None)
                params.seed = None
        if include_usage:
            usage = Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            yield Completion(**base, choices=[], usage=usage).model_dump()

    return generate()
