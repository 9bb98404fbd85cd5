"""Small example builders shared by the dataset toolkit tests."""

from __future__ import annotations

from typing import Any


def chat(user: str, assistant: str, system: str | None = None) -> dict[str, Any]:
    """A one-turn chat example."""
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def chats(n: int) -> list[dict[str, Any]]:
    """n distinct valid chat examples."""
    return [chat(f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(n)]
