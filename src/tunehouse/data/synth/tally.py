"""Counts a user can see: per stage of a synthesis run, what was kept and what was dropped and why.

Every drop names its reason ("malformed reply", "not grounded in its passage") and keeps the first
few samples (a file name, a question), so a run's report says which documents or pairs went where.
Stages are filled from worker threads, so counting takes a lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SAMPLES_PER_REASON = 3


@dataclass
class Stage:
    name: str
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def keep(self, n: int = 1) -> None:
        with self._lock:
            self.kept += n

    def drop(self, reason: str, sample: str | None = None) -> None:
        with self._lock:
            self.dropped[reason] += 1
            kept = self.samples.setdefault(reason, [])
            if sample is not None and len(kept) < SAMPLES_PER_REASON:
                kept.append(sample)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        """`"2 dropped: 1 empty (a.txt), 1 binary file (b.bin)"`, or `"none dropped"`."""
        if not self.dropped:
            return "none dropped"
        parts = []
        for reason, count in self.dropped.most_common():
            samples = self.samples.get(reason)
            parts.append(f"{count} {reason}" + (f" ({', '.join(samples)})" if samples else ""))
        return f"{self.n_dropped} dropped: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.name, "kept": self.kept, "dropped": dict(self.dropped), "samples": self.samples}


@dataclass
class Tally:
    """The stages of one run, in the order they first counted something."""

    stages: dict[str, Stage] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Stage:
        return self.stages.setdefault(name, Stage(name))

    def to_list(self) -> list[dict[str, Any]]:
        return [stage.to_dict() for stage in self.stages.values()]
