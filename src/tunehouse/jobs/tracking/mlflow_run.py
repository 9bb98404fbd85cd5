"""MLflow: one run per job in an experiment, with params, per-step metrics and the outputs as artifacts.

Where runs go: an `mlflow` integration's `tracking_uri` (http/https only, so a user cannot make the
server write to its own disk, and only to hosts the operator allows: `jobs/integrations.py`), else the server's TUNEHOUSE_MLFLOW_TRACKING_URI, else MLFLOW_TRACKING_URI.
The integration may also set `experiment_name` (default "tunehouse"), `run_name` and `tags`.
Metrics are buffered and sent in batches: one request per step would slow a fast trainer.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tunehouse.jobs.integrations import check_endpoint
from tunehouse.jobs.tracking.base import MLFLOW_URI_ENV, JobContext, Tracker

FLUSH_SECONDS = 5.0
FLUSH_METRICS = 500
MAX_PARAM_LENGTH = 500


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → MLflow params (`hyperparameters.n_epochs` = "3")."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = text[:MAX_PARAM_LENGTH]
    return flat


def tracking_uri(options: dict[str, Any]) -> str:
    given = options.get("tracking_uri")
    if given:
        check_endpoint(given, "mlflow.tracking_uri")  # again at connection time: DNS may have changed
        return str(given)
    uri = os.environ.get(MLFLOW_URI_ENV) or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ValueError(f"no MLflow tracking URI: the server sets {MLFLOW_URI_ENV}")
    return uri


def local_artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store go beside the database; MLflow's own default is `./mlruns`
    under whatever directory the trainer runs in. Remote servers keep their own default."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
    return (database.parent / f"{database.stem}-artifacts").as_uri()


class MlflowTracker(Tracker):
    label = "MLflow"

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.client: Any = None
        self.run_id: str | None = None
        self.context: JobContext | None = None
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()

    def start(self, context: JobContext) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.context = context
        uri = tracking_uri(self.options)
        self.client = MlflowClient(tracking_uri=uri)
        name = self.options.get("experiment_name") or "tunehouse"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(name, artifact_location=local_artifact_location(uri))
        )
        tags = {tag: "true" for tag in context.tags}
        user_tags = self.options.get("tags") or {}
        if isinstance(user_tags, list):
            user_tags = {str(t): "true" for t in user_tags}
        tags.update({str(k): str(v) for k, v in user_tags.items()})
        tags.update({"tunehouse.job_id": context.job_id, "tunehouse.base_model": context.base_model})
        run = self.client.create_run(experiment_id, run_name=self.options.get("run_name") or context.job_id, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flatten(context.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def metrics(self, step: int, data: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(key, value, now, step) for key, value in data.items())
        if len(self._pending) >= FLUSH_METRICS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._last_flush = time.monotonic()
        for i in range(0, len(pending), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=pending[i : i + 1000])

    def checkpoint(self, step: int, name: str, metrics: dict[str, Any]) -> None:
        self.client.set_tag(self.run_id, "tunehouse.last_checkpoint_step", str(step))

    def finish(self, result_csv: bytes, model_dir: Path, fine_tuned_model: str) -> None:
        assert self.context is not None
        self._flush()
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / f"{self.context.job_id}_results.csv"
            results.write_bytes(result_csv)
            self.client.log_artifact(self.run_id, str(results))
        artifact_path = "adapter" if (model_dir / "adapter_config.json").exists() else None
        if artifact_path:  # full weights are too big to copy by default
            self.client.log_artifacts(self.run_id, str(model_dir), artifact_path=artifact_path)
        self.client.set_tag(self.run_id, "tunehouse.fine_tuned_model", fine_tuned_model)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.run_id = None

    def abort(self) -> None:
        if self.client is None or self.run_id is None:
            return
        try:
            self._flush()  # keep the steps that were trained
        finally:
            run_id, self.run_id = self.run_id, None
            self.client.set_terminated(run_id, "FAILED")
