"""Claiming queued jobs: each worker takes the oldest queued job that fits its machine, and no two
workers take the same one.

The jobs table is the queue. On PostgreSQL the candidates are read `FOR UPDATE SKIP LOCKED`, so
workers claiming at the same moment each lock different rows instead of queueing behind one another;
the claim itself is an `UPDATE … WHERE status = 'queued'`, a compare-and-set that SQLite (which has
no row locks, and serializes writers) makes just as safe. A queue library (procrastinate, PgQueuer)
would keep a second copy of each job's state beside the one the API shows, and would not run on
SQLite, which single-machine installs use.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from tunehouse.config import settings
from tunehouse.jobs.leases import Capacity
from tunehouse.jobs.records import add_event
from tunehouse.store.db import session
from tunehouse.store.schema import JobRow

CANDIDATES = 16
"""Queued jobs looked at per claim: the oldest ones, so a job no worker can run does not block the rest."""


def fits(training: dict[str, Any], capacity: Capacity) -> bool:
    """Whether a job with these `training` options can run on a worker with `capacity`.

    `training.device: "cuda"` needs a GPU per process; `"cpu"` runs anywhere (the trainer is shown no
    GPU). Unset, the job runs on the worker's own device, and asks as many GPUs as processes there.
    """
    device = training.get("device")
    processes = training.get("processes") or 1
    if device == "cpu":
        return True
    if device == "cuda" or capacity.gpus:
        return capacity.gpus >= processes
    return True


def claim_validation(worker_id: str) -> str | None:
    """Take the oldest job waiting for its files to be validated, so that one worker validates it; a
    worker that dies while validating holds it only until its lease runs out."""
    now = time.time()
    free = JobRow.worker_id.is_(None) | (JobRow.lease_expires_at < now)
    with session() as s:
        candidates = s.scalars(
            select(JobRow.id)
            .where(JobRow.status == "validating_files", free)
            .order_by(JobRow.seq)
            .limit(CANDIDATES)
            .with_for_update(skip_locked=True)
        ).all()
        for job_id in candidates:
            taken = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == "validating_files", free)
                .values(worker_id=worker_id, lease_expires_at=now + settings().lease_seconds)
            )
            if cast(CursorResult[Any], taken).rowcount > 0:
                return str(job_id)
    return None


def claim_next_job(worker_id: str, capacity: Capacity) -> str | None:
    """Move the oldest queued job that fits to `running`, leased to `worker_id`; None if none waits."""
    now = time.time()
    with session() as s:
        candidates = s.execute(
            select(JobRow.id, JobRow.training_options)
            .where(JobRow.status == "queued")
            .order_by(JobRow.seq)
            .limit(CANDIDATES)
            .with_for_update(skip_locked=True)
        ).all()
        for job_id, training in candidates:
            if not fits(training or {}, capacity):
                continue
            claimed = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == "queued")
                .values(
                    status="running",
                    worker_id=worker_id,
                    lease_expires_at=now + settings().lease_seconds,
                    worker_host=socket.gethostname(),
                    worker_pid=os.getpid(),
                    heartbeat_at=now,
                )
            )
            if cast(CursorResult[Any], claimed).rowcount > 0:
                break
        else:
            return None
    add_event(job_id, f"Claimed by worker {worker_id} on {socket.gethostname()}")
    return str(job_id)
