"""The tracker interface: what every experiment tracker implements, and the job context it is given."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MLFLOW_URI_ENV = "TUNEHOUSE_MLFLOW_TRACKING_URI"


@dataclass
class JobContext:
    """What a tracker needs to know about the job: ids for naming, and the config to log."""

    job_id: str
    base_model: str
    n_epochs: int
    config: dict[str, Any]
    tags: list[str] = field(default_factory=list)

    def epoch(self, step: int, total_steps: int) -> float:
        """Fractional epoch at `step` (1.0 = the end of the first epoch)."""
        return step / max(total_steps / max(self.n_epochs, 1), 1e-9)


class Tracker(ABC):
    """One experiment tracker's run for one job. Any method may raise; the caller handles it."""

    label = "tracker"

    @abstractmethod
    def start(self, context: JobContext) -> None: ...

    @abstractmethod
    def metrics(self, step: int, data: dict[str, float]) -> None: ...

    def checkpoint(self, step: int, name: str, metrics: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """A checkpoint was saved; most trackers only note it."""

    @abstractmethod
    def finish(self, result_csv: bytes, model_dir: Path, fine_tuned_model: str) -> None:
        """Training succeeded: log the result file and the adapter, then close the run."""

    def abort(self) -> None:  # noqa: B027 - optional hook
        """Training ended without success (or the tracker was turned off): close the run as failed."""


def numeric_metrics(data: dict[str, Any]) -> dict[str, float]:
    """The values a tracker can chart: finite numbers, without the step counters."""
    return {
        k: float(v)
        for k, v in data.items()
        if k not in ("step", "total_steps")
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    }
