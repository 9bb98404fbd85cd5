"""The one place errors become OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`.

The SDK raises its typed exception from the status (400 BadRequestError, 401 AuthenticationError,
404 NotFoundError, 409 ConflictError, …) and copies `code`, `param` and `type` onto it. Nothing that
the user sent may produce a 500 or a traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunehouse.errors import TunehouseError

log = logging.getLogger(__name__)


def envelope(status: int, message: str, *, type: str, param: str | None, code: str | None) -> JSONResponse:
    headers = {"x-should-retry": "false"} if status >= 500 else None
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": type, "param": param, "code": code}},
        headers=headers,
    )


def _param_from_location(location: tuple[int | str, ...]) -> str | None:
    parts = [str(p) for p in location if p not in ("body", "query", "path", "form")]
    if not parts:
        return None
    text = parts[0]
    for part in parts[1:]:
        text += f"[{part}]" if part.isdigit() else f".{part}"
    return text


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TunehouseError)
    async def _tunehouse_error(_: Request, exc: TunehouseError) -> JSONResponse:
        return envelope(exc.status_code, exc.message, type=exc.error_type, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "Invalid request."}
        param = _param_from_location(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            message, param = "We could not parse the JSON body of your request.", None
        elif first.get("type") == "missing":
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}."
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
