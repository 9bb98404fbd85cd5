"""The worker's trainer children: none outlives its server, and a restarted server takes the job back."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil

from tests.conftest import TINY_ID, Server, make_home
from tests.support import chat_rows, upload_rows, wait_for_job
from tunehouse.jobs.launch import RUNNER


def trainers_of(server: Server, job_id: str) -> list[psutil.Process]:
    assert server.process is not None
    return [
        p
        for p in psutil.Process(server.process.pid).children(recursive=True)
        if RUNNER in " ".join(p.cmdline()) and job_id in p.cmdline()
    ]


def wait_for_trainer(server: Server, job_id: str, timeout: float = 120) -> list[psutil.Process]:
    deadline = time.time() + timeout
    while not (found := trainers_of(server, job_id)):
        assert time.time() < deadline, "no trainer started"
        time.sleep(0.2)
    return found


def test_sigkilled_server_leaves_no_trainer_and_a_cancel_after_restart_stops_the_job(
    tmp_path: Path, shipped_model_dir: Path, tiny_model_dir: Path
) -> None:
    home = make_home(tmp_path / "home", shipped_model_dir)
    first = Server(home)
    assert first.cli("models", "add", TINY_ID, str(tiny_model_dir)).returncode == 0
    first.start()
    client = first.client()
    job = client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=upload_rows(client, tmp_path, chat_rows(12)), hyperparameters={"n_epochs": 50}
    )
    trainers = wait_for_trainer(first, job.id)
    assert first.process is not None
    first.process.send_signal(signal.SIGKILL)  # the server alone: its trainer runs in a session of its own
    first.process.wait()
    # It notices once its watch runs, which starts after its imports: seconds, more on a loaded machine.
    _, alive = psutil.wait_procs(trainers, timeout=60)
    assert not alive, "the trainer outlived its server"

    second = Server(home).start()
    try:
        client = second.client()
        assert wait_for_job(client, job.id, until={"running"}).status == "running"
        wait_for_trainer(second, job.id)
        started = time.time()
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        while trainers_of(second, job.id):
            assert time.time() - started < 10, "the trainer still runs 10 s after the cancel"
            time.sleep(0.2)
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any("re-queued" in m for m in messages)
    finally:
        second.stop()
