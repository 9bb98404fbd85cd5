"""How the trainer tells the outside world what it is doing, without knowing about jobs or the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Reporter(Protocol):
    def message(self, text: str, level: str = "info") -> None: ...

    def metrics(self, step: int, total_steps: int, data: dict[str, Any]) -> None: ...

    def checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None: ...

    def progress(self, step: int, total_steps: int, seconds_per_step: float) -> None: ...


class SilentReporter:
    """Reports nothing: for the trainer processes besides the main one, whose reports would repeat it,
    and for runs outside a job (throughput measurement, benchmarks)."""

    def message(self, text: str, level: str = "info") -> None:
        pass

    def metrics(self, step: int, total_steps: int, data: dict[str, Any]) -> None:
        pass

    def checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        pass

    def progress(self, step: int, total_steps: int, seconds_per_step: float) -> None:
        pass
