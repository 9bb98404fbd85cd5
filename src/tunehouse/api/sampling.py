"""What chat and legacy completions share: the request's null rule and its honesty rule, its sampling
fields → the engine's SamplingParams, the response header, and starting a stream before the response
does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import model_validator

from tunehouse.api.request import OpenAIRequest
from tunehouse.errors import InvalidRequest
from tunehouse.ids import new_id
from tunehouse.serve.engine import SamplingParams

FINGERPRINT = "fp_tunehouse"


def _always(value: Any, body: dict[str, Any]) -> bool:
    return True


NO_EFFECT: dict[str, Callable[[Any, dict[str, Any]], bool]] = {
    # identifiers and bookkeeping that OpenAI keeps for its own dashboards: nothing a reply depends on
    "user": _always,
    "metadata": _always,
    "store": _always,
    "prompt_cache_key": _always,
    "safety_identifier": _always,
    # OpenAI's defaults, which are what tunehouse does anyway
    "service_tier": lambda value, body: value in ("auto", "default"),
    "modalities": lambda value, body: value == ["text"],
}
"""Fields a completion request may carry without a field of its own, and when their value changes
nothing about the reply; every other field the request does not declare is refused."""


class SamplingRequest(OpenAIRequest):
    """Base of the completion requests: a field tunehouse does not honour gets a 400 naming it, never
    a reply that pretends (a null field counts as not sent, as OpenAI reads it)."""

    no_effect: ClassVar[dict[str, Callable[[Any, dict[str, Any]], bool]]] = NO_EFFECT

    @model_validator(mode="before")
    @classmethod
    def _refuse_what_is_not_honoured(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            if name in cls.model_fields or value is None:
                continue
            harmless = cls.no_effect.get(name)
            if harmless is None:
                raise InvalidRequest(
                    f"Unsupported parameter: '{name}' is not supported by tunehouse.",
                    param=name,
                    code="unsupported_parameter",
                )
            if not harmless(value, data):
                raise InvalidRequest(
                    f"Unsupported value: '{name}' does not support {value!r} with tunehouse.",
                    param=name,
                    code="unsupported_value",
                )
        return data


def response_header(id_prefix: str, model: str) -> dict[str, Any]:
    """The fields every completion response and each of its stream chunks share."""
    return {"id": new_id(id_prefix), "created": int(time.time()), "model": model, "system_fingerprint": FINGERPRINT}


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 4:
        raise InvalidRequest("stop accepts at most 4 sequences.", param="stop")
    return [s for s in stops if s]


def logit_bias_ids(logit_bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    """`logit_bias` as the engine takes it: token ids (sent as JSON object keys, so strings) → bias."""
    bias: dict[int, float] = {}
    for key, value in (logit_bias or {}).items():
        token_id = int(key) if key.strip().isdigit() else -1
        if not 0 <= token_id < vocab_size:
            raise InvalidRequest(
                f"Invalid 'logit_bias': {key!r} is not a token id of this model (0 to {vocab_size - 1}).",
                param="logit_bias",
            )
        if not -100 <= value <= 100:
            raise InvalidRequest(
                f"Invalid 'logit_bias': the bias of token {key} is {value}; it must be from -100 to 100.",
                param="logit_bias",
            )
        bias[token_id] = float(value)
    return bias


GREEDY_BELOW = 1e-4
"""A temperature below this samples the most likely token anyway; it is run as greedy decoding."""


def sampling_params(
    *,
    max_tokens: int,
    temperature: float | None,
    top_p: float | None,
    stop: str | list[str] | None,
    seed: int | None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    logit_bias: dict[int, float] | None = None,
) -> SamplingParams:
    if temperature is not None and temperature < GREEDY_BELOW:
        temperature = 0.0  # dividing logits by a tiny temperature overflows them: it is greedy anyway
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        stop=stop_list(stop),
        seed=seed,
        presence_penalty=presence_penalty or 0.0,
        frequency_penalty=frequency_penalty or 0.0,
        logit_bias=logit_bias or {},
    )
