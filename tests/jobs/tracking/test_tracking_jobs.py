"""W&B (offline) and MLflow (local SQLite store) runs written by real jobs, read back from disk.

One server for the module, started with WANDB_MODE=offline, WANDB_DIR and
TUNEHOUSE_MLFLOW_TRACKING_URI in its environment, as a deployment would set them.
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from openai import OpenAI
from openai.types.fine_tuning import FineTuningJob

from tests.conftest import TINY_ID, Server, make_home, running_server
from tests.jobs.tracking.wandb_records import read_offline_run
from tests.support import chat_rows, upload_rows, wait_for_job

ONE_EPOCH = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}


@pytest.fixture(scope="module")
def tracked_server(
    tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("tracked")
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(root / "wandb"),
        "WANDB_SILENT": "true",
        "TUNEHOUSE_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
        "TUNEHOUSE_ALLOWED_OUTBOUND": "127.0.0.1",  # the failing tracking server below
    }
    with running_server(make_home(root / "home", shipped_model_dir), tiny_model_dir, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def tracked_client(tracked_server: Server) -> OpenAI:
    return tracked_server.client()


@pytest.fixture(scope="module")
def finished_job(tracked_client: OpenAI, tmp_path_factory: pytest.TempPathFactory) -> FineTuningJob:
    """One job with a W&B integration, trained to the end (MLflow is on server-wide)."""
    tmp = tmp_path_factory.mktemp("tracked-files")
    train = upload_rows(tracked_client, tmp, chat_rows(10), "train.jsonl")
    valid = upload_rows(tracked_client, tmp, chat_rows(3, topic="shade"), "valid.jsonl")
    job = tracked_client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=train,
        validation_file=valid,
        method=ONE_EPOCH,
        seed=3,
        integrations=[{"type": "wandb", "wandb": {"project": "colours", "tags": ["seed-000"]}}],
    )
    done = wait_for_job(tracked_client, job.id)
    assert done.status == "succeeded", done.error
    return done


def result_rows(client: OpenAI, job: FineTuningJob) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))


def test_wandb_offline_run_holds_config_and_every_step(
    tracked_server: Server, tracked_client: OpenAI, finished_job: FineTuningJob
) -> None:
    [run_dir] = (Path(tracked_server.env["WANDB_DIR"]) / "wandb").glob(f"offline-run-*-{finished_job.id}")
    run = read_offline_run(run_dir)

    assert run.run_id == finished_job.id
    assert run.name == finished_job.id  # no name given: the job id, as OpenAI does
    assert run.project == "colours"
    assert run.job_type == "fine-tune"
    assert set(run.tags) == {
        "tunehouse/finetune",
        f"tunehouse/{TINY_ID}",
        f"tunehouse/{finished_job.id}",
        "seed-000",
    }
    assert run.config["model"] == TINY_ID
    assert run.config["training_file"] == finished_job.training_file
    assert run.config["hyperparameters"]["n_epochs"] == 1
    assert run.config["hyperparameters"]["batch_size"] == finished_job.hyperparameters.batch_size
    assert run.config["seed"] == 3

    rows = result_rows(tracked_client, finished_job)
    assert [h["_step"] for h in run.history] == [int(r["step"]) for r in rows] == list(range(1, 11))
    for logged, row in zip(run.history, rows, strict=True):
        assert logged["train_loss"] == pytest.approx(float(row["train_loss"]))
        assert logged["train_mean_token_accuracy"] == pytest.approx(float(row["train_accuracy"]))
    assert any("valid_loss" in h for h in run.history)
    assert run.history[-1]["epoch"] == pytest.approx(1.0)

    assert run.summary["fine_tuned_model"] == finished_job.fine_tuned_model
    assert run.artifacts[f"{finished_job.id}-results"] == [f"{finished_job.id}_results.csv"]
    assert "adapter_config.json" in run.artifacts[f"{finished_job.id}-adapter"]
    assert run.exit_code == 0


def test_mlflow_store_holds_params_metrics_and_artifacts(
    tracked_server: Server, tracked_client: OpenAI, finished_job: FineTuningJob
) -> None:
    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(tracking_uri=tracked_server.env["TUNEHOUSE_MLFLOW_TRACKING_URI"])
    experiment = mlflow.get_experiment_by_name("tunehouse")
    [run] = mlflow.search_runs([experiment.experiment_id], f"tags.`tunehouse.job_id` = '{finished_job.id}'")

    assert run.info.run_name == finished_job.id
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == TINY_ID
    assert run.data.params["hyperparameters.n_epochs"] == "1"
    assert run.data.params["seed"] == "3"
    assert run.data.tags[f"tunehouse/{finished_job.id}"] == "true"
    assert run.data.tags["tunehouse.fine_tuned_model"] == finished_job.fine_tuned_model

    history = mlflow.get_metric_history(run.info.run_id, "train_loss")
    rows = result_rows(tracked_client, finished_job)
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 11))
    by_step = {m.step: m.value for m in history}
    assert all(by_step[int(r["step"])] == pytest.approx(float(r["train_loss"])) for r in rows)
    assert mlflow.get_metric_history(run.info.run_id, "valid_loss")

    assert run.info.artifact_uri.startswith(
        (Path(tracked_server.env["WANDB_DIR"]).parent / "mlflow-artifacts").as_uri()
    )
    artifacts = {a.path for a in mlflow.list_artifacts(run.info.run_id)}
    assert f"{finished_job.id}_results.csv" in artifacts
    assert "adapter/adapter_config.json" in {a.path for a in mlflow.list_artifacts(run.info.run_id, "adapter")}


class _FailingTrackingServer(BaseHTTPRequestHandler):
    """A tracking server that answers every request with a 500 whose body must not reach the job."""

    def _fail(self) -> None:
        body = b'{"error_code": "INTERNAL_ERROR", "message": "SECRET-REMOTE-BODY"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _fail

    def log_message(self, *args: object) -> None:
        pass


def test_failing_tracker_warns_and_training_still_succeeds(tracked_client: OpenAI, tmp_path: Path) -> None:
    train = upload_rows(tracked_client, tmp_path, chat_rows(10), "train.jsonl")
    remote = ThreadingHTTPServer(("127.0.0.1", 0), _FailingTrackingServer)
    threading.Thread(target=remote.serve_forever, daemon=True).start()
    try:
        job = tracked_client.fine_tuning.jobs.create(
            model=TINY_ID,
            training_file=train,
            method=ONE_EPOCH,
            integrations=[  # type: ignore[list-item]  # the SDK types integrations as W&B only
                {"type": "mlflow", "mlflow": {"tracking_uri": f"http://127.0.0.1:{remote.server_port}"}}
            ],
        )
        done = wait_for_job(tracked_client, job.id)
    finally:
        remote.shutdown()
    assert done.status == "succeeded", done.error
    events = list(tracked_client.fine_tuning.jobs.list_events(job.id, limit=100))
    warnings = [e.message for e in events if e.level == "warn" and "MLflow tracking failed" in e.message]
    assert len(warnings) == 1, [e.message for e in events]
    assert "training continues" in warnings[0]
    assert not any("SECRET-REMOTE-BODY" in e.message for e in events)
