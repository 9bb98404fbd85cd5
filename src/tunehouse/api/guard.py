"""Who may reach the server from a web page, and how large a request may be, checked before routing.

With no API key (the loopback default) any web page the user visits could reach the server: a page
whose DNS name is rebound to 127.0.0.1 reads files and models (its `Host` is its own name), and a
cross-site form posts uploads (CSRF). So with no key only loopback names and TUNEHOUSE_ALLOWED_HOSTS
are answered, and a state-changing request whose `Origin` is neither the server itself nor in
TUNEHOUSE_ALLOWED_ORIGINS is refused, key or not. The dashboard is same-origin and unaffected.

Bodies are bounded as they arrive: a declared `Content-Length` over the limit is refused before a
byte is read, and a body without one is cut off at the limit. File uploads may be as large as
TUNEHOUSE_MAX_FILE_BYTES (plus room for the multipart framing); everything else
TUNEHOUSE_MAX_REQUEST_BYTES.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunehouse.api.errors import envelope
from tunehouse.config import settings
from tunehouse.errors import Forbidden, PayloadTooLarge, TunehouseError

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
UPLOAD_PATHS = ("/v1/files", "/v1/uploads")
MULTIPART_SLACK = 1024 * 1024
LOOPBACK_NAMES = {"localhost"}


def is_loopback_name(host: str) -> bool:
    """`localhost`, `*.localhost` or a loopback address (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(netloc: str) -> str:
    return (urlsplit(f"//{netloc}").hostname or "").lower()


class RequestGuard:
    """ASGI middleware applying the module's rules to every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self._check_origin(scope, headers)
            limit = self._body_limit(scope)
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _too_large(limit)
        except TunehouseError as exc:
            await _refuse(scope, receive, send, exc)
            return
        await _BoundedBody(limit).run(self.app, scope, receive, send)

    def _check_origin(self, scope: Scope, headers: dict[str, str]) -> None:
        config = settings()
        host = _hostname(headers.get("host", ""))
        allowed = {h.lower() for h in config.allowed_hosts}
        keyless = not config.api_key and not config.admin_key  # with either, every /v1 request needs a key
        if keyless and not (is_loopback_name(host) or host in allowed or "*" in allowed):
            raise Forbidden(
                f"This server answers requests for its loopback address, not for '{host}'. Behind a reverse "
                "proxy, name its host in TUNEHOUSE_ALLOWED_HOSTS.",
                code="host_not_allowed",
            )
        origin = headers.get("origin")
        if scope["method"] in UNSAFE_METHODS and origin is not None and origin != "null":
            same = urlsplit(origin).netloc.lower() == headers.get("host", "").lower()
            if not same and origin.rstrip("/") not in config.allowed_origins:
                raise Forbidden(
                    f"Requests from the web page at {origin} may not change anything here. Allow the origin "
                    "in TUNEHOUSE_ALLOWED_ORIGINS.",
                    code="origin_not_allowed",
                )
        elif origin == "null" and scope["method"] in UNSAFE_METHODS:
            raise Forbidden("Requests from an opaque origin may not change anything here.", code="origin_not_allowed")

    @staticmethod
    def _body_limit(scope: Scope) -> int:
        config = settings()
        if scope["method"] == "POST" and scope["path"].rstrip("/") in UPLOAD_PATHS:
            return config.max_file_bytes + MULTIPART_SLACK
        return config.max_request_bytes


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than this server's {limit:,}-byte limit.", code="request_too_large"
    )


class _BoundedBody:
    """Runs the app with a body cut off after `limit` bytes: past it the client gets the 413 here,
    and the app sees the client go away (so no route turns the error into one of its own)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0
        self.started = False  # whoever answers first owns the response
        self.refused = False

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        async def bounded_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.seen += len(message.get("body", b""))
                if self.seen > self.limit:
                    if not self.started:
                        self.started = self.refused = True
                        await _refuse(scope, receive, send, _too_large(self.limit))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if self.refused:
                return
            self.started = True
            await send(message)

        await app(scope, bounded_receive, guarded_send)


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: TunehouseError) -> None:
    response = envelope(exc.status_code, exc.message, type=exc.error_type, param=exc.param, code=exc.code)
    await response(scope, receive, send)
