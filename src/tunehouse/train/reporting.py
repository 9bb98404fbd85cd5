"""How the trainer tells the outside world what it is doing, without knowing about jobs or the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Reporter(Protocol):
    def message(self, text: str, level: str = "info") -> None: ...

    def metrics(self, step: int, total_steps: int, data: dict[str, Any]) -> None: ...

    def checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None: ...

    def progress(self, step: int, total_steps: int, seconds_per_step: float) -> None: ...


class PrintReporter:
    """Reports to stdout; used by benchmarks and ad-hoc runs outside a job."""

    def message(self, text: str, level: str = "info") -> None:
        print(f"[{level}] {text}")

    def metrics(self, step: int, total_steps: int, data: dict[str, Any]) -> None:
        print(f"step {step}/{total_steps}: " + ", ".join(f"{k}={v:.4g}" for k, v in data.items()))

    def checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        print(f"checkpoint at step {step}: {path}")

    def progress(self, step: int, total_steps: int, seconds_per_step: float) -> None:
        pass


class SilentReporter:
    """Reports nothing: for the trainer processes besides the main one, whose reports would repeat it."""

    def message(self, text: str, level: str = "info") -> None:
        pass

    def metrics(self, step: int, total_steps: int, data: dict[str, Any]) -> None:
        pass

    def checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        pass

    def progress(self, step: int, total_steps: int, seconds_per_step: float) -> None:
        pass
