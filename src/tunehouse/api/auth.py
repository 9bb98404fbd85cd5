"""Bearer-key check. With no key configured the server accepts any key (it then binds only loopback)."""

from __future__ import annotations

import secrets

from fastapi import Request

from tunehouse.config import settings
from tunehouse.errors import AuthenticationFailed


async def require_api_key(request: Request) -> None:
    """Checked on the event loop: a sync dependency would take a worker thread for every request."""
    expected = settings().api_key
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.", code="missing_api_key"
        )
    if not secrets.compare_digest(given.strip().encode(), expected.encode()):
        shown = given[:3] + "*" * max(0, len(given) - 7) + given[-4:] if len(given) > 8 else "****"
        raise AuthenticationFailed(f"Incorrect API key provided: {shown}.")
