"""HTTP for `GET /v1/organization/workers`: the training workers sharing this server's store, what
each can run and what it runs now.

A worker's current job may belong to any project, so with an admin key configured only the admin key
sees them; a single-user server shows them to its one key.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunehouse.api.auth import require_admin_key, require_api_key
from tunehouse.api.workers.protocol import Worker, WorkerList
from tunehouse.config import settings
from tunehouse.jobs.leases import list_workers

router = APIRouter()


async def require_operator(request: Request) -> None:
    """The admin key where one is set, else the server's API key (none on an open loopback server)."""
    if settings().admin_key:
        await require_admin_key(request)
    else:
        await require_api_key(request)


@router.get("/v1/organization/workers", response_model=WorkerList)
def workers() -> WorkerList:
    return WorkerList(data=[Worker.from_row(row) for row in list_workers()])
