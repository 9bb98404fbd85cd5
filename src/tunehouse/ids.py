"""Object ids in OpenAI's shapes (`file-…`, `ftjob-…`), sortable by creation time.

A time prefix keeps ids increasing so the store can page with `after=<id>` by comparing ids, as the
SDK's cursor pagination expects; the random tail keeps them unique across processes.
"""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase  # ordered like ASCII


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def sortable_token(length: int = 24) -> str:
    """`length` base62 chars: 9 encode microseconds since the epoch, the rest are random."""
    stamp = _base62(time.time_ns() // 1000, 9)
    tail = "".join(secrets.choice(_ALPHABET) for _ in range(length - 9))
    return stamp + tail


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}{sortable_token(length)}"
