"""Query parameters shared by list endpoints."""

from __future__ import annotations

from tunehouse.errors import InvalidRequest


def check_limit(limit: int, maximum: int) -> int:
    if not 1 <= limit <= maximum:
        raise InvalidRequest(f"limit must be between 1 and {maximum}.", param="limit")
    return limit
