"""Request fields shared by chat and legacy completions → the engine's SamplingParams."""

from __future__ import annotations

import time
from typing import Any

from tunehouse.errors import InvalidRequest
from tunehouse.ids import new_id
from tunehouse.serve.engine import SamplingParams

FINGERPRINT = "fp_tunehouse"


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


def sampling_params(
    *,
    max_tokens: int,
    temperature: float | None,
    top_p: float | None,
    stop: str | list[str] | None,
    seed: int | None,
) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        stop=stop_list(stop),
        seed=seed,
    )
