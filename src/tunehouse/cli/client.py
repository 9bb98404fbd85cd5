"""What every client command shares: the `openai` SDK client, the connection options, and errors.

Client commands talk HTTP to a server (any tunehouse deployment), never to the local store. The
connection comes from `--base-url`/`--api-key`, else TUNEHOUSE_BASE_URL and TUNEHOUSE_API_KEY (or
OPENAI_API_KEY). A failure prints one line, `Error: <message>`, and exits 1 — never a traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, NoReturn

import openai
import typer
from openai import OpenAI
from rich.console import Console
from rich.markup import escape

from tunehouse.errors import TunehouseError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
TERMINAL_STATES = {"succeeded", "failed", "cancelled"}
NO_KEY = "sk-no-key-given"
_KEY_GIVEN: ContextVar[bool] = ContextVar("tunehouse_cli_key_given", default=True)
"""Whether the command's client was given a key, for the message of a 401."""

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

BaseUrl = Annotated[
    str,
    typer.Option("--base-url", envvar="TUNEHOUSE_BASE_URL", help="The server's OpenAI-compatible /v1 URL."),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar=["TUNEHOUSE_API_KEY", "OPENAI_API_KEY"],
        help="Bearer key, when the server requires one.",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def make_client(base_url: str, api_key: str | None) -> OpenAI:
    # The SDK insists on a key; a server without auth accepts any.
    _KEY_GIVEN.set(bool(api_key))
    return OpenAI(base_url=base_url, api_key=api_key or NO_KEY, max_retries=2)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]Error:[/red] {escape(message)}")
    raise typer.Exit(code)


def error_message(exc: openai.APIError) -> str:
    """The server's own message from OpenAI's error envelope, not the SDK's `Error code: 400 - {...}`."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.response.text[:300] or exc.message}"
    return exc.message


@contextmanager
def api_errors() -> Iterator[None]:
    """Turn every failure a user can cause or fix into `Error: …` and exit 1."""
    try:
        yield
    except openai.APIConnectionError as exc:
        url = getattr(getattr(exc, "request", None), "url", None)
        where = f"{url.scheme}://{url.netloc.decode()}" if url is not None else "the server"
        fail(f"Cannot reach {where} ({exc.__cause__ or exc.message}). Is `tunehouse serve` running? See --base-url.")
    except openai.AuthenticationError as exc:
        if not _KEY_GIVEN.get():  # openai 3.x keeps no Authorization header on the failed request
            fail("The server requires an API key: pass --api-key or set TUNEHOUSE_API_KEY.")
        fail(error_message(exc))
    except openai.APIError as exc:
        fail(error_message(exc))
    except TunehouseError as exc:
        fail(exc.message)


def to_dict(obj: Any) -> Any:
    return obj.model_dump(mode="json", exclude_unset=False) if hasattr(obj, "model_dump") else obj


def print_json(obj: Any) -> None:
    print(json.dumps(to_dict(obj), indent=2, ensure_ascii=False))


def when(timestamp: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
