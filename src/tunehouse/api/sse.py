"""Long-lived responses: server-sent events as the SDK reads them (`data: {json}` blocks ending with
`data: [DONE]`), and noticing a client that hung up.

Everything here is async, so a stream, or a request waiting its turn, holds no thread while it waits.
An idle stream sends an SSE comment now and then (`: keep-alive`, which SSE readers skip), so a
connection that died without a word is found out by the write that fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from tunehouse.errors import TunehouseError

log = logging.getLogger(__name__)
T = TypeVar("T")
HEARTBEAT_SECONDS = 5.0
DISCONNECT_POLL_SECONDS = 0.25
KEEP_ALIVE = ": keep-alive\n\n"
CLIENT_GONE = 499  # the status logged for a request whose client hung up before its answer (nginx's)


async def sse_stream(payloads: AsyncIterator[dict[str, Any] | None]) -> AsyncIterator[str]:
    """Each payload as one event; an error mid-stream becomes an `error` payload, as OpenAI sends.

    A None payload means "nothing new yet": it becomes a keep-alive comment once the stream has been
    silent for HEARTBEAT_SECONDS.
    """
    last_write = time.monotonic()
    try:
        async for payload in payloads:
            if payload is None:
                if time.monotonic() - last_write >= HEARTBEAT_SECONDS:
                    last_write = time.monotonic()
                    yield KEEP_ALIVE
                continue
            last_write = time.monotonic()
            yield f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
    except TunehouseError as exc:
        yield f"data: {json.dumps({'error': exc.to_dict()})}\n\n"
    except Exception:
        log.exception("error while streaming")
        error = {
            "message": "The server had an error while generating.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
        yield f"data: {json.dumps({'error': error})}\n\n"
    yield "data: [DONE]\n\n"


async def first_taken(items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """`items` with its first item already awaited, so that a failure before the first one (a busy
    server, a deleted model, broken weights) raises while the response can still answer with its
    error status. Closing the result closes `items`."""
    first = await anext(items)

    async def chained() -> AsyncGenerator[T, None]:
        try:
            yield first
            async for item in items:
                yield item
        finally:
            await items.aclose()

    return chained()


async def until_disconnected(request: Request) -> None:
    """Returns once the client has hung up."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None if the client hung up first, in which case `work` is cancelled: a
    request still waiting its turn then never runs, and a running generation stops."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        task.cancel()  # a no-op once it is done
    if task.done() and not task.cancelled():
        return task.result()
    return None


async def generation_response(
    request: Request,
    stream: bool,
    chunks: Callable[[], Awaitable[AsyncIterator[dict[str, Any]]]],
    reply: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any] | Response:
    """A generation route's answer once its turn comes: the stream of `chunks()` as server-sent
    events, or `reply()`; CLIENT_GONE if the client hung up while it waited."""
    if stream:
        streamed = await unless_disconnected(request, chunks())
        if streamed is None:
            return Response(status_code=CLIENT_GONE)
        return StreamingResponse(sse_stream(streamed), media_type="text/event-stream")
    answer = await unless_disconnected(request, reply())
    return Response(status_code=CLIENT_GONE) if answer is None else answer
