"""HTTP for the legacy `/completions`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from tunehouse.api.completions.protocol import CompletionRequest
from tunehouse.api.completions.serving import create_completion, stream_completion
from tunehouse.api.sse import CLIENT_GONE, sse_stream, unless_disconnected

router = APIRouter()


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> dict[str, Any] | Response:
    """Waits its turn for the engine without holding a thread; a client that hangs up meanwhile
    takes its request out of the line."""
    engine = request.app.state.engine
    if body.stream:
        chunks = await unless_disconnected(request, stream_completion(engine, body))
        if chunks is None:
            return Response(status_code=CLIENT_GONE)
        return StreamingResponse(sse_stream(chunks), media_type="text/event-stream")
    reply = await unless_disconnected(request, create_completion(engine, body))
    return Response(status_code=CLIENT_GONE) if reply is None else reply
