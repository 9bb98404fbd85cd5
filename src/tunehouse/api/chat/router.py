"""HTTP for `/chat/completions`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from tunehouse.api.chat.protocol import ChatCompletionRequest
from tunehouse.api.chat.serving import create_chat_completion, stream_chat_completion
from tunehouse.api.sse import generation_response

router = APIRouter()


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> dict[str, Any] | Response:
    """Waits its turn for the engine without holding a thread; a client that hangs up meanwhile
    takes its request out of the line."""
    engine = request.app.state.engine
    return await generation_response(
        request,
        bool(body.stream),
        lambda: stream_chat_completion(engine, body),
        lambda: create_chat_completion(engine, body),
    )
