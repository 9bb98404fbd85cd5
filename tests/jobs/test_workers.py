"""Workers on several machines: one API process (`serve --no-worker`) and two `tunehouse worker`
processes, each with a home of its own, sharing one PostgreSQL database and one S3 bucket (moto's
real S3 server), as separate machines would. Jobs are claimed once each; a worker killed mid-job has
its job finished by the other, from the shared checkpoint, with the loss of an uninterrupted run."""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from openai import OpenAI

from tests import postgres
from tests.conftest import TINY_ID, Server, make_home
from tests.support import chat_rows, upload_rows, wait_for_job

BUCKET = "tunehouse"
LEASE_SECONDS = 3  # short, so the killed worker's job is taken over within seconds


@dataclass
class Cluster:
    api: Server
    client: OpenAI
    workers: list[subprocess.Popen[bytes]]
    worker_homes: list[Path]
    env: dict[str, str]
    s3: Any


def _start_api(api: Server) -> None:
    """`tunehouse serve --no-worker`: the API alone; the workers train."""
    log = open(api.log, "ab")  # noqa: SIM115  # the server's log while it runs
    command = [sys.executable, "-m", "tunehouse.cli.main", "serve", "--no-worker", "--port", str(api.port)]
    api.process = subprocess.Popen(command, env=api.env, stdout=log, stderr=log)
    deadline = time.time() + 60
    while time.time() < deadline:
        assert api.process.poll() is None, api.log.read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{api.port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"the API did not start: {api.log.read_text()[-3000:]}")


def _start_worker(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(home / "worker.log", "ab")  # noqa: SIM115  # the worker's log while it runs
    return subprocess.Popen(
        [sys.executable, "-m", "tunehouse.cli.main", "worker"],
        env={**env, "TUNEHOUSE_HOME": str(home)},
        stdout=log,
        stderr=log,
    )


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    shipped_model_dir: Path,
    tiny_model_dir: Path,
    postgres_cluster: postgres.Cluster,
) -> Iterator[Cluster]:
    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3_server.start()
    endpoint = f"http://127.0.0.1:{s3_server.get_host_and_port()[1]}"
    aws = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    s3.create_bucket(Bucket=BUCKET)
    root = tmp_path_factory.mktemp("machines")
    api = Server(make_home(root / "api", shipped_model_dir))
    api.env.update(aws)
    api.env.update(
        {
            "TUNEHOUSE_DATABASE_URL": postgres_cluster.database_for("tests/jobs/test_workers.py"),
            "TUNEHOUSE_BLOB_URL": f"s3://{BUCKET}/shared",
            "TUNEHOUSE_LEASE_SECONDS": str(LEASE_SECONDS),
            "TUNEHOUSE_AUTO_EVAL_EXAMPLES": "0",
        }
    )
    added = api.cli("models", "add", TINY_ID, str(tiny_model_dir))
    assert added.returncode == 0, added.stderr
    _start_api(api)
    homes = [make_home(root / f"worker{i}", shipped_model_dir) for i in (1, 2)]
    workers = [_start_worker(home, api.env) for home in homes]
    try:
        yield Cluster(api, api.client(), workers, homes, api.env, s3)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=30)
        api.stop()
        s3_server.stop()


def _workers(cluster: Cluster) -> list[dict[str, Any]]:
    listing: Any = cluster.client.get("/organization/workers", cast_to=object)
    return list(listing["data"])


def _messages(client: OpenAI, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=1000)][::-1]


def _claims(client: OpenAI, job_id: str) -> list[str]:
    """The workers that claimed the job, in order (`Claimed by worker wrk_… on HOST`)."""
    return [m.split()[3] for m in _messages(client, job_id) if m.startswith("Claimed by worker")]


def _result_rows(client: OpenAI, job_id: str) -> list[dict[str, str]]:
    [result_id] = client.fine_tuning.jobs.retrieve(job_id).result_files
    return list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))


def _keys(cluster: Cluster, prefix: str) -> list[str]:
    listing = cluster.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"shared/{prefix}")
    return [item["Key"] for item in listing.get("Contents", [])]


def test_two_workers_run_four_jobs_each_claimed_once(cluster: Cluster, tmp_path: Path) -> None:
    client = cluster.client
    training_file = upload_rows(client, tmp_path, chat_rows(12))
    assert _keys(cluster, f"files/{training_file}")  # the upload is in the bucket, where workers read it
    jobs = [
        client.fine_tuning.jobs.create(
            model=TINY_ID, training_file=training_file, seed=i, hyperparameters={"n_epochs": 1, "batch_size": 2}
        )
        for i in range(4)
    ]
    done = [wait_for_job(client, job.id) for job in jobs]
    assert [job.status for job in done] == ["succeeded"] * 4, [job.error for job in done]

    deadline = time.time() + 10
    workers = _workers(cluster)
    while any(w["status"] != "idle" for w in workers):  # each records its job's end just after the job
        assert time.time() < deadline, workers
        time.sleep(0.1)
        workers = _workers(cluster)
    assert len(workers) == 2
    assert {w["pid"] for w in workers} == {p.pid for p in cluster.workers}
    for worker in workers:
        assert worker["device"] == "cpu" and worker["gpus"] == 0 and worker["status"] == "idle"
        assert worker["current_job"] is None and time.time() - worker["last_heartbeat_at"] < LEASE_SECONDS
    claims = {job.id: _claims(client, job.id) for job in jobs}
    assert all(len(claimed) == 1 for claimed in claims.values()), claims  # each job claimed once
    assert {claimed[0] for claimed in claims.values()} == {w["id"] for w in workers}  # both took jobs

    for job in done:  # trained on a worker, read here: the result file and the model are in the bucket
        assert [int(r["step"]) for r in _result_rows(client, job.id)] == list(range(1, 7))
        assert any(
            k.endswith("adapter_config.json") or k.endswith("config.json")
            for k in _keys(cluster, f"models/ft/{job.id}")
        )

    model = done[0].fine_tuned_model
    assert model is not None
    for home in cluster.worker_homes:  # the worker's folder is on its own machine, out of the API's reach
        shutil.rmtree(home / "models" / "ft" / done[0].id, ignore_errors=True)
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert answer.model == model and answer.usage is not None and answer.usage.completion_tokens > 0
    assert (cluster.api.home / "models" / "ft" / done[0].id / "adapter_config.json").exists()  # fetched here

    shown = cluster.api.cli("workers", "--json", "--base-url", cluster.api.base_url)
    assert shown.returncode == 0, shown.stderr
    assert [(w["id"], w["status"]) for w in json.loads(shown.stdout)] == [(w["id"], w["status"]) for w in workers]
    table = cluster.api.cli("workers", "--base-url", cluster.api.base_url)
    assert table.returncode == 0 and "idle" in table.stdout and "cpu" in table.stdout, table.stderr


def test_a_killed_workers_job_is_finished_by_the_other_with_the_same_loss(cluster: Cluster, tmp_path: Path) -> None:
    client = cluster.client
    request: dict[str, Any] = {
        "model": TINY_ID,
        "training_file": upload_rows(client, tmp_path, chat_rows(20)),
        "seed": 77,
        "hyperparameters": {"n_epochs": 3, "batch_size": 1},  # 60 steps
        "extra_body": {"training": {"checkpoint_interval": 5}},
    }
    doomed = client.fine_tuning.jobs.create(**request)
    reference = client.fine_tuning.jobs.create(**request)  # the same job, left alone, on the other worker

    deadline = time.time() + 120
    while not client.fine_tuning.jobs.checkpoints.list(doomed.id).data:
        assert time.time() < deadline, "the job wrote no checkpoint"
        time.sleep(0.1)
    [holder] = [w for w in _workers(cluster) if w["current_job"] == doomed.id]
    [victim] = [p for p in cluster.workers if p.pid == holder["pid"]]
    victim.send_signal(signal.SIGKILL)  # no goodbye: its lease simply stops being renewed
    victim.wait()
    assert client.fine_tuning.jobs.retrieve(doomed.id).status == "running"  # killed mid-job

    finished = wait_for_job(client, doomed.id)
    assert finished.status == "succeeded", finished.error
    assert wait_for_job(client, reference.id).status == "succeeded"

    claimed = _claims(client, doomed.id)
    assert len(claimed) == 2 and claimed[0] == holder["id"] and claimed[1] != holder["id"]
    messages = _messages(client, doomed.id)
    assert any("stopped renewing its lease" in m for m in messages)
    assert any("resuming from its checkpoint step-" in m for m in messages)
    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(doomed.id, limit=1000) if e.type == "metrics"]
    assert sorted(steps) == list(range(1, 61))  # every step reported once

    resumed_rows, uninterrupted_rows = _result_rows(client, doomed.id), _result_rows(client, reference.id)
    assert [float(r["train_loss"]) for r in resumed_rows] == pytest.approx(
        [float(r["train_loss"]) for r in uninterrupted_rows], abs=1e-5
    )
    assert finished.trained_tokens == client.fine_tuning.jobs.retrieve(reference.id).trained_tokens
    assert [w["status"] for w in _workers(cluster) if w["id"] == holder["id"]] == ["lost"]
