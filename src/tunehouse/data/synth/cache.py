"""Replies already received, kept on disk so an interrupted run resumes without asking again.

A reply is stored under a hash of everything that decides it: the model id, the messages (the
prompt with its passage), the sampling parameters and the seed. Each reply is committed on its own
in SQLite with `synchronous=FULL` before the run uses it, so a run killed at any moment (SIGKILL,
power loss) keeps every reply it had; the next run finds them and asks only for the rest. The
endpoint's address is not part of the key: the same model behind another URL answers the same.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from tunehouse.config import settings

SCHEMA = "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, reply TEXT NOT NULL, created REAL NOT NULL)"


def default_cache_path() -> Path:
    return settings().home / "synth" / "replies.sqlite3"


def request_key(model: str, messages: list[dict[str, str]], params: dict[str, Any], seed: int) -> str:
    """The cache key of one request: a SHA-256 of its canonical JSON."""
    canonical = json.dumps(
        {"model": model, "messages": messages, "params": params, "seed": seed},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class ReplyCache:
    """A durable key → reply store shared by the run's threads (and safe for two runs at once)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(SCHEMA)

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, model: str, reply: str) -> None:
        """Store a reply durably (committed and synced before returning)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies (key, model, reply, created) VALUES (?, ?, ?, ?)",
                (key, model, reply, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
