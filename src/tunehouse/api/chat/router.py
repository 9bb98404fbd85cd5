"""HTTP for `/chat/completions`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tunehouse.api.chat.protocol import ChatCompletionRequest
from tunehouse.api.chat.serving import create_chat_completion, stream_chat_completion
from tunehouse.api.sse import sse_stream

router = APIRouter()


@router.post("/chat/completions", response_model=None)
def chat_completions(body: ChatCompletionRequest, request: Request) -> dict[str, Any] | StreamingResponse:
    engine = request.app.state.engine
    if body.stream:
        return StreamingResponse(sse_stream(stream_chat_completion(engine, body)), media_type="text/event-stream")
    return create_chat_completion(engine, body)
