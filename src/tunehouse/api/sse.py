"""Server-sent events as the SDK reads them: `data: {json}` blocks ending with `data: [DONE]`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from tunehouse.errors import TunehouseError

log = logging.getLogger(__name__)


def sse_stream(payloads: Iterator[dict]) -> Iterator[str]:
    """Each payload as one event; an error mid-stream becomes an `error` payload, as OpenAI sends."""
    try:
        for payload in payloads:
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
