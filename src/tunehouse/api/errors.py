"""The one place errors become OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`.

The SDK raises its typed exception from the status (400 BadRequestError, 401 AuthenticationError,
404 NotFoundError, 409 ConflictError, …) and copies `code`, `param` and `type` onto it. Nothing that
the user sent may produce a 500 or a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunehouse.errors import TunehouseError

log = logging.getLogger(__name__)


RETRY_AFTER_SECONDS = 1
"""What a 429 asks the client to wait: the line moves a generation at a time, so soon is worth a try."""


def envelope(status: int, message: str, *, type: str, param: str | None, code: str | None) -> JSONResponse:
    headers = None
    if status >= 500:
        headers = {"x-should-retry": "false"}
    elif status == 429:  # the SDK waits this long before its retry, instead of its own guess
        headers = {"retry-after": str(RETRY_AFTER_SECONDS)}
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type, "param": param, "code": code}},
        headers=headers,
    )


SCALAR_TYPES = {"str", "int", "float", "bool"}


def _is_union_member(part: int | str) -> bool:
    """Pydantic names the union member a value did not fit in its location: `str`, `list[int]`, …"""
    return isinstance(part, str) and (part in SCALAR_TYPES or part.endswith("]") or part.startswith("constrained-"))


def _split_location(location: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], str | None]:
    """The field the user sent (without the request part) and the union member its value failed, if any."""
    parts = [p for p in location if p not in ("body", "query", "path", "form")]
    for index, part in enumerate(parts):
        if _is_union_member(part):
            return tuple(parts[:index]), str(part)
    return tuple(parts), None


def _param(field: tuple[int | str, ...]) -> str | None:
    if not field:
        return None
    text = str(field[0])
    for part in field[1:]:
        text += f"[{part}]" if isinstance(part, int) or part.isdigit() else f".{part}"
    return text


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """The message and param for the first problem in the request."""
    first = errors[0] if errors else {"loc": (), "msg": "Invalid request.", "type": "value_error"}
    field, _ = _split_location(tuple(first.get("loc", ())))
    param = _param(field)
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request.", None
    if param is None:
        return "The request body must be a JSON object.", None
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    members = [m for f, m in (_split_location(tuple(e.get("loc", ()))) for e in errors) if f == field and m]
    if members:  # the value fits none of the union's members
        return f"Invalid type for '{param}': expected one of {', '.join(dict.fromkeys(members))}.", param
    return f"Invalid value for '{param}': {first.get('msg', 'invalid')}.", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TunehouseError)
    async def _tunehouse_error(_: Request, exc: TunehouseError) -> JSONResponse:
        return envelope(exc.status_code, exc.message, type=exc.error_type, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(list(exc.errors()))
        return envelope(400, message, type="invalid_request_error", param=param, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return envelope(exc.status_code, message, type="invalid_request_error", param=None, code=None)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected server error")
        return envelope(
            500,
            "The server had an error while processing your request.",
            type="server_error",
            param=None,
            code="internal_error",
        )
