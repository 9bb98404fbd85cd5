"""What chat and legacy completions share: the request's null rule, its sampling fields → the engine's
SamplingParams, the response header, and starting a stream before the response does."""

from __future__ import annotations

import time
from typing import Any

from tunehouse.api.request import OpenAIRequest
from tunehouse.errors import InvalidRequest
from tunehouse.ids import new_id
from tunehouse.serve.engine import SamplingParams

FINGERPRINT = "fp_tunehouse"


class SamplingRequest(OpenAIRequest):
    """Base of the completion requests."""


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


GREEDY_BELOW = 1e-4
"""A temperature below this samples the most likely token anyway; it is run as greedy decoding."""


def sampling_params(
    *,
    max_tokens: int,
    temperature: float | None,
    top_p: float | None,
    stop: str | list[str] | None,
    seed: int | None,
) -> SamplingParams:
    if temperature is not None and temperature < GREEDY_BELOW:
        temperature = 0.0  # dividing logits by a tiny temperature overflows them: it is greedy anyway
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        stop=stop_list(stop),
        seed=seed,
    )
