"""HTTP for the legacy `/completions`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tunehouse.api.completions.protocol import CompletionRequest
from tunehouse.api.completions.serving import create_completion, stream_completion
from tunehouse.api.sse import sse_stream

router = APIRouter()


@router.post("/completions", response_model=None)
def completions(body: CompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
    engine = request.app.state.engine
    if body.stream:
        return StreamingResponse(sse_stream(stream_completion(engine, body)), media_type="text/event-stream")
    return create_completion(engine, body)
