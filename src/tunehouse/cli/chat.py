"""`tunehouse chat MODEL`: talk to a base or fine-tuned model, replies streamed as they are generated.

Each line you type is a user turn; the conversation is kept until `/reset`. `/exit` or end of input
(Ctrl-D) leaves. Piped input works too: `echo "hi" | tunehouse chat ft:...`.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import openai
import typer

from tunehouse.cli.client import (
    DEFAULT_BASE_URL,
    ApiKey,
    BaseUrl,
    api_errors,
    error_message,
    fail,
    make_client,
)

HELP = "Commands: /reset forgets the conversation, /exit leaves."


def _read_line(interactive: bool) -> str | None:
    if interactive:
        try:
            return input("> ")
        except EOFError:
            print()
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def chat(
    model: Annotated[str, typer.Argument(help="Model id, e.g. ft:tiny-llama:tunehouse::abcd1234.")],
    system: Annotated[str | None, typer.Option("--system", "-s", help="A system message.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", "-t")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", "-M", help="Per reply.")] = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they come.")] = True,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Chat with a model interactively (streaming)."""
    interactive = sys.stdin.isatty()
    with api_errors():
        client = make_client(base_url, api_key)
        client.models.retrieve(model)  # fail now, not after the first question
    start: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    options: dict[str, Any] = {}
    if temperature is not None:
        options["temperature"] = temperature
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if interactive:
        print(f"Chatting with {model}. {HELP}")
    while (line := _read_line(interactive)) is not None:
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = list(start)
            print("(conversation reset)")
            continue
        messages.append({"role": "user", "content": text})
        try:
            reply = _complete(client, model, messages, stream, options)
        except openai.APIError as exc:
            messages.pop()
            if not interactive:
                fail(error_message(exc))
            print(f"Error: {error_message(exc)}", file=sys.stderr)
            continue
        messages.append({"role": "assistant", "content": reply})


def _complete(client: Any, model: str, messages: list[dict[str, Any]], stream: bool, options: dict[str, Any]) -> str:
    if not stream:
        response = client.chat.completions.create(model=model, messages=messages, **options)
        reply = response.choices[0].message.content or ""
        print(reply, flush=True)
        return reply
    parts: list[str] = []
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True, **options):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
            print(chunk.choices[0].delta.content, end="", flush=True)
    print(flush=True)
    return "".join(parts)
