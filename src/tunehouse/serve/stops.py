"""Stop sequences in streamed text: never emit a stop string, nor a tail that may begin one."""

from __future__ import annotations


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop sequence, and whether one was found."""
    positions = [text.find(s) for s in stops if s and s in text]
    if not positions:
        return text, False
    return text[: min(positions)], True


def safe_prefix_length(text: str, stops: list[str]) -> int:
    """How much of `text` can be emitted now: all but a tail that could be the start of a stop."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold
