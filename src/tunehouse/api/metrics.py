"""`GET /metrics`: the serving engine's figures (`serve/metrics.py`) in Prometheus's text format.

It sits at the server's root, where Prometheus looks, not under `/v1`. It is guarded as `/v1` is:
with TUNEHOUSE_API_KEY set it wants `Authorization: Bearer <key>` (Prometheus sends it from a scrape
config's `authorization: {credentials: ...}`), since request counts and model traffic are the
server's business; with no key the server answers loopback names only (`api/guard.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from tunehouse.api.auth import require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.get("/metrics", include_in_schema=False)
async def scrape() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
