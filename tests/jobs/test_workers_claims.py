"""Claims and leases against a real store (SQLite, and PostgreSQL's `FOR UPDATE SKIP LOCKED`): many
workers claiming at once take each job once, a job is left for a worker that can run it, and an
expired lease sends the job back to the others while its old holder learns it lost it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from tests.conftest import TINY_ID
from tunehouse.ids import new_id
from tunehouse.jobs.claims import claim_next_job, claim_validation, fits
from tunehouse.jobs.leases import Capacity, list_workers, register_worker, release_expired_leases, renew
from tunehouse.store.db import session
from tunehouse.store.schema import EventRow, JobRow

CPU = Capacity("cpu", 0, None)
TWO_GPUS = Capacity("cuda", 2, 81_559)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEHOUSE_LEASE_SECONDS", "30")
    if request.param == "postgresql":
        monkeypatch.setenv("TUNEHOUSE_DATABASE_URL", request.getfixturevalue("postgres_url"))
    else:
        monkeypatch.delenv("TUNEHOUSE_DATABASE_URL", raising=False)
    return str(request.param)


def queue_job(training: dict[str, object] | None = None) -> str:
    job_id = new_id("ftjob-")
    hyperparameters = {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0}
    with session() as s:
        s.add(
            JobRow(
                id=job_id,
                created_at=int(time.time()),
                model=TINY_ID,
                organization_id="org-tunehouse",
                training_file="file-x",
                status="queued",
                method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
                hyperparameters=hyperparameters,
                training_options=training or {},
                seed=1,
                result_files=[],
            )
        )
    return job_id


def claim_events(job_id: str) -> list[str]:
    with session() as s:
        messages = s.scalars(select(EventRow.message).where(EventRow.job_id == job_id)).all()
    return [m for m in messages if m.startswith("Claimed by worker")]


def test_a_job_goes_only_to_a_worker_that_can_run_it() -> None:
    assert fits({}, CPU) and fits({}, TWO_GPUS)
    assert fits({"device": "cpu", "processes": 4}, CPU) and fits({"device": "cpu", "processes": 4}, TWO_GPUS)
    assert not fits({"device": "cuda"}, CPU)
    assert fits({"device": "cuda", "processes": 2}, TWO_GPUS) and not fits({"device": "cuda", "processes": 3}, TWO_GPUS)
    assert not fits({"processes": 3}, TWO_GPUS)  # one process per GPU on a GPU worker
    assert fits({"processes": 3}, CPU)  # CPU processes


def test_eight_workers_claiming_at_once_take_each_job_once(store: str) -> None:
    jobs = [queue_job() for _ in range(24)]
    workers = [register_worker(CPU) for _ in range(8)]
    taken: dict[str, list[str]] = {worker: [] for worker in workers}

    def claim_loop(worker: str) -> None:
        while (job_id := claim_next_job(worker, CPU)) is not None:
            taken[worker].append(job_id)

    threads = [threading.Thread(target=claim_loop, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    claimed = [job_id for worker in workers for job_id in taken[worker]]
    assert sorted(claimed) == sorted(jobs)  # every job, none twice
    with session() as s:
        rows = {row.id: row for row in s.scalars(select(JobRow)).all()}
    for worker in workers:
        for job_id in taken[worker]:
            assert rows[job_id].status == "running" and rows[job_id].worker_id == worker
            assert rows[job_id].lease_expires_at is not None and rows[job_id].lease_expires_at > time.time()
            assert len(claim_events(job_id)) == 1


def test_a_gpu_job_waits_for_a_gpu_worker_and_later_jobs_pass_it(store: str) -> None:
    gpu_job = queue_job({"device": "cuda"})
    cpu_job = queue_job()
    cpu_worker, gpu_worker = register_worker(CPU), register_worker(TWO_GPUS)
    assert claim_next_job(cpu_worker, CPU) == cpu_job  # the older GPU job does not block it
    assert claim_next_job(cpu_worker, CPU) is None
    assert claim_next_job(gpu_worker, TWO_GPUS) == gpu_job
    assert [(w.id, w.device, w.gpus, w.gpu_memory_mb) for w in list_workers()] == [
        (cpu_worker, "cpu", 0, None),
        (gpu_worker, "cuda", 2, 81_559),
    ]


def test_an_expired_lease_sends_the_job_back_and_its_old_holder_learns_it_lost_it(store: str) -> None:
    running, pausing = queue_job(), queue_job()
    old, new = register_worker(CPU), register_worker(CPU)
    assert claim_next_job(old, CPU) == running and claim_next_job(old, CPU) == pausing
    with session() as s:
        s.execute(update(JobRow).where(JobRow.id == pausing).values(status="pausing"))
    assert renew(old, running)  # held and renewed: nothing to release
    assert release_expired_leases() == []

    with session() as s:  # the old worker went silent a lease ago
        s.execute(update(JobRow).values(lease_expires_at=time.time() - 1))
    assert sorted(release_expired_leases()) == sorted([running, pausing])
    assert release_expired_leases() == []  # each is released once
    with session() as s:
        statuses = dict(s.execute(select(JobRow.id, JobRow.status)).all())
    assert statuses == {running: "queued", pausing: "paused"}  # a pausing job is paused, not resumed

    assert claim_next_job(new, CPU) == running  # resumed by another worker
    assert not renew(old, running)  # the old worker, back, finds the lease gone and stops its trainer
    assert renew(new, running)
    assert [w.status for w in list_workers()] == ["busy", "busy"]


def test_one_worker_validates_each_new_job_until_its_lease_runs_out(store: str) -> None:
    job_id = queue_job()
    with session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(status="validating_files"))
    first, second = register_worker(CPU), register_worker(CPU)
    assert claim_validation(first) == job_id
    assert claim_validation(second) is None  # the first one is on it
    with session() as s:  # the first worker died while validating
        s.execute(update(JobRow).values(lease_expires_at=time.time() - 1))
    assert claim_validation(second) == job_id
