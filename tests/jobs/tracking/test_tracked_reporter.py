"""The fan-out reporter: trackers see every metric; one that raises is turned off with one warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunehouse.errors import InvalidRequest
from tunehouse.jobs.tracking import reporter as fan_out
from tunehouse.jobs.tracking.base import JobContext, Tracker
from tunehouse.jobs.tracking.mlflow_run import flatten, local_artifact_location, tracking_uri
from tunehouse.jobs.tracking.reporter import TrackedReporter


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def message(self, text: str, level: str = "info") -> None:
        self.calls.append(("message", text))

    def metrics(self, step: int, total_steps: int, data: dict[str, Any]) -> None:
        self.calls.append(("metrics", step))

    def checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        self.calls.append(("checkpoint", step))

    def progress(self, step: int, total_steps: int, seconds_per_step: float) -> None:
        self.calls.append(("progress", step))


class FakeTracker(Tracker):
    label = "Fake"

    def __init__(self, fail_at_step: int | None = None) -> None:
        self.fail_at_step = fail_at_step
        self.steps: list[tuple[int, dict[str, float]]] = []
        self.finished = self.aborted = False

    def start(self, context: JobContext) -> None:
        pass

    def metrics(self, step: int, data: dict[str, float]) -> None:
        if step == self.fail_at_step:
            raise ConnectionError("tracker unreachable")
        self.steps.append((step, data))

    def finish(self, result_csv: bytes, model_dir: Path, fine_tuned_model: str) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(fan_out, "add_event", lambda job_id, message, level="info": seen.append((level, message)))
    return seen


CONTEXT = JobContext(job_id="ftjob-test", base_model="tiny", n_epochs=2, config={})


def test_every_metric_reaches_the_job_and_the_trackers(warnings: list) -> None:
    inner, tracker = Recorder(), FakeTracker()
    reporter = TrackedReporter(inner, CONTEXT, [tracker])
    for step in range(1, 5):
        reporter.metrics(step, 4, {"train_loss": 1.0 / step, "train_mean_token_accuracy": 0.5, "note": "x"})
    reporter.finish(b"step\n", Path("."), "ft:tiny::x")

    assert [c for c in inner.calls if c[0] == "metrics"] == [("metrics", s) for s in range(1, 5)]
    assert [s for s, _ in tracker.steps] == [1, 2, 3, 4]
    assert tracker.steps[1][1] == {"train_loss": 0.5, "train_mean_token_accuracy": 0.5, "epoch": 1.0}
    assert tracker.finished and not warnings


def test_a_failing_tracker_is_turned_off_with_one_warning(warnings: list) -> None:
    inner, broken, healthy = Recorder(), FakeTracker(fail_at_step=2), FakeTracker()
    reporter = TrackedReporter(inner, CONTEXT, [broken, healthy])
    for step in range(1, 5):
        reporter.metrics(step, 4, {"train_loss": 1.0})
    reporter.finish(b"", Path("."), "ft:tiny::x")

    assert len(inner.calls) == 4  # the job's own events never miss a step
    assert [s for s, _ in broken.steps] == [1] and broken.aborted and not broken.finished
    assert [s for s, _ in healthy.steps] == [1, 2, 3, 4] and healthy.finished
    [(level, message)] = warnings
    assert level == "warn"
    assert "Fake tracking failed (metrics: ConnectionError)" in message
    assert "tracker unreachable" not in message  # what a remote service says is never copied


def test_a_tracker_that_cannot_start_is_skipped(warnings: list) -> None:
    class NoStart(FakeTracker):
        def start(self, context: JobContext) -> None:
            raise RuntimeError("no API key")

    reporter = TrackedReporter(Recorder(), CONTEXT, [NoStart()])
    reporter.metrics(1, 1, {"train_loss": 1.0})
    assert reporter.trackers == [] and len(warnings) == 1


def test_abort_closes_runs_left_open_by_a_crash(warnings: list) -> None:
    tracker = FakeTracker()
    reporter = TrackedReporter(Recorder(), CONTEXT, [tracker])
    reporter.abort()
    assert tracker.aborted and not tracker.finished


def test_mlflow_params_are_flat_and_local_stores_come_only_from_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert flatten({"hyperparameters": {"n_epochs": 3, "lr": "auto"}, "suffix": None}) == {
        "hyperparameters.n_epochs": "3",
        "hyperparameters.lr": "auto",
        "suffix": "null",
    }
    with pytest.raises(InvalidRequest, match="http"):
        tracking_uri({"tracking_uri": "file:///etc"})
    monkeypatch.setenv("TUNEHOUSE_MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    assert tracking_uri({}) == "sqlite:////tmp/x.db"
    assert local_artifact_location("sqlite:////tmp/x.db") == "file:///tmp/x-artifacts"
    assert local_artifact_location("http://mlflow.internal:5000") is None
