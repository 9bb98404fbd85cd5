"""How model graders reach a model: this server's own engine, any OpenAI-compatible endpoint, or
the engine first and the endpoint for models the engine does not know."""

from __future__ import annotations

from typing import Any

from tunehouse.errors import ModelNotFound
from tunehouse.eval.graders.core import ModelCaller, ModelReply
from tunehouse.models.template import render_chat_prompt
from tunehouse.serve.engine import Engine, SamplingParams

DEFAULT_MAX_TOKENS = 256  # a score or a label needs few tokens; a grader that reasons first sets its own
GREEDY_BELOW = 1e-4  # as the chat route reads a tiny temperature: greedy decoding


def engine_caller(engine: Engine) -> ModelCaller:
    """Generate with `engine` (the server's, from `app.state.engine`, or the worker's own), the way
    the chat route does: the model's chat template, then its tokens. Call it off the event loop."""

    def call(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> ModelReply:
        handle = engine.open(model)
        prompt_ids = handle.encode(render_chat_prompt(handle.tokenizer, messages))
        handle.check_prompt(prompt_ids, param="grader.input")
        temperature = sampling.get("temperature")
        params = SamplingParams(
            max_tokens=sampling.get("max_tokens") or DEFAULT_MAX_TOKENS,
            temperature=1.0 if temperature is None else (0.0 if temperature < GREEDY_BELOW else temperature),
            top_p=sampling.get("top_p", 1.0),
            seed=sampling.get("seed"),
        )
        result = engine.generate(handle, prompt_ids, params)
        return ModelReply(result.text, result.prompt_tokens, result.completion_tokens)

    return call


def openai_caller(base_url: str, api_key: str | None) -> ModelCaller:
    """Chat completions from any OpenAI-compatible endpoint, through the official SDK."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=1)

    def call(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> ModelReply:
        response = client.chat.completions.create(model=model, messages=messages, **sampling)  # type: ignore[arg-type]  # checked dicts, not the SDK's TypedDicts
        usage = response.usage
        return ModelReply(
            response.choices[0].message.content or "",
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
        )

    return call


def routing_caller(local: ModelCaller, remote: ModelCaller | None) -> ModelCaller:
    """`local` for the models it knows; `remote`, when there is one, for the others."""

    def call(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> str | ModelReply:
        try:
            return local(model, messages, sampling)
        except ModelNotFound:
            if remote is None:
                raise
        return remote(model, messages, sampling)

    return call
