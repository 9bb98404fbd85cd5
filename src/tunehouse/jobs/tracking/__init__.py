"""Experiment trackers (Weights & Biases, MLflow) fed by the trainer, alongside the job's own events.

The trainer reports to one `Reporter`; `attach_trackers` wraps the job's `StoreReporter` so that every
message, metric and checkpoint also reaches the trackers the job asked for. A tracker that fails is
turned off with one warning event on the job; training never fails because of it.
"""

from tunehouse.jobs.tracking.base import JobContext, Tracker
from tunehouse.jobs.tracking.reporter import TrackedReporter, attach_trackers

__all__ = ["JobContext", "TrackedReporter", "Tracker", "attach_trackers"]
