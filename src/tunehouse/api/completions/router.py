"""HTTP for the legacy `/completions`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from tunehouse.api.completions.protocol import CompletionRequest
from tunehouse.api.completions.serving import create_completion, stream_completion
from tunehouse.api.sse import generation_response

router = APIRouter()


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> dict[str, Any] | Response:
    """Waits its turn for the engine without holding a thread; a client that hangs up meanwhile
    takes its request out of the line."""
    engine = request.app.state.engine
    return await generation_response(
        request, bool(body.stream), lambda: stream_completion(engine, body), lambda: create_completion(engine, body)
    )
