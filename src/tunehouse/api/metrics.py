"""Serving metrics at the API: `GET /metrics` in Prometheus's text format, and the figures of each
finished request, which only the serving layer sees whole (its end-to-end latency, finish reason and
tokens; the engine reports first tokens, gaps and its queue itself, see `serve/metrics.py`).

`/metrics` sits at the server's root, where Prometheus looks, not under `/v1`. It is guarded as `/v1`
is: with TUNEHOUSE_API_KEY set it wants `Authorization: Bearer <key>` (Prometheus sends it from a
scrape config's `authorization: {credentials: ...}`), since request counts and model traffic are the
server's business; with no key the server answers loopback names only (`api/guard.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from tunehouse.api.auth import require_api_key
from tunehouse.serve import metrics
from tunehouse.serve.engine import Generation, StreamEvent

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.get("/metrics", include_in_schema=False)
async def scrape() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def _finished(generation: Generation, seconds: float) -> None:
    metrics.count_tokens(prompt=generation.prompt_tokens, generated=generation.completion_tokens)
    metrics.observe_request(seconds, generation.finish_reason)


async def measured(generations: Awaitable[list[Generation]]) -> list[Generation]:
    """`generations`, awaited, each choice counted as a finished request from now."""
    start = time.monotonic()
    results = await generations
    for result in results:
        _finished(result, time.monotonic() - start)
    return results


async def measured_stream(events: AsyncGenerator[StreamEvent, None]) -> AsyncGenerator[StreamEvent, None]:
    """`events` passed through, each choice counted as a finished request when its Generation comes, or
    as `abort` when the stream is closed before (the client hung up). Closing this closes `events`."""
    start = time.monotonic()
    unfinished: set[int] = set()
    try:
        async for index, item in events:
            unfinished.add(index)
            if isinstance(item, Generation):
                _finished(item, time.monotonic() - start)
                unfinished.discard(index)
            yield index, item
    except (GeneratorExit, asyncio.CancelledError):
        for _ in unfinished:
            metrics.observe_request(time.monotonic() - start, "abort")
        raise
    finally:
        await events.aclose()
