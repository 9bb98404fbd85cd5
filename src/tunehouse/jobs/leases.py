"""Workers and their leases on jobs: what each worker can run, its heartbeat, and how a job whose
worker vanished goes back to the others.

A worker that claims a job holds it until `lease_expires_at`; its heartbeat thread pushes that
forward every quarter of `TUNEHOUSE_LEASE_SECONDS`. A worker that dies (SIGKILL, a lost machine)
stops renewing, and once its lease has run out any other worker sends the job back to the queue
(`release_expired_leases`), from where it is claimed again and resumes from its newest checkpoint.
A worker that finds its lease gone (it stalled past the lease and another took over) stops its
trainer at once, so a job never trains in two places.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from tunehouse.config import settings
from tunehouse.hardware import cuda_memory_mb
from tunehouse.ids import new_id
from tunehouse.jobs.records import ACTIVE_STATES, add_event
from tunehouse.store.db import session
from tunehouse.store.schema import JobRow, WorkerRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capacity:
    """What a worker can run: its device and GPUs (count, and the smallest one's memory)."""

    device: str  # cpu | cuda
    gpus: int
    gpu_memory_mb: int | None


def this_machine() -> Capacity:
    """This machine's capacity, as the trainer would find it (CUDA_VISIBLE_DEVICES honoured)."""
    memory = cuda_memory_mb()
    return Capacity("cuda" if memory else "cpu", len(memory), min(memory) if memory else None)


def heartbeat_seconds() -> float:
    """How often a worker renews its lease: four times per lease, so one late beat costs nothing."""
    return max(0.2, settings().lease_seconds / 4)


def register_worker(capacity: Capacity) -> str:
    """Add this process to the `workers` table; returns its id (`wrk_…`)."""
    now = time.time()
    worker_id = new_id("wrk_")
    row = WorkerRow(
        id=worker_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        device=capacity.device,
        gpus=capacity.gpus,
        gpu_memory_mb=capacity.gpu_memory_mb,
        started_at=int(now),
        heartbeat_at=now,
        current_job=None,
        status="idle",
    )
    with session() as s:
        s.add(row)
    return worker_id


def renew(worker_id: str, job_id: str | None) -> bool:
    """One heartbeat: the worker's row, and the lease on `job_id` while it runs there. Returns False
    when the lease is no longer this worker's (another worker took the job over)."""
    now = time.time()
    with session() as s:
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.id == worker_id)
            .values(heartbeat_at=now, current_job=job_id, status="busy" if job_id else "idle")
        )
        if job_id is None:
            return True
        s.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.worker_id == worker_id, JobRow.status.in_(ACTIVE_STATES))
            .values(lease_expires_at=now + settings().lease_seconds)
        )
        holder = s.scalar(select(JobRow.worker_id).where(JobRow.id == job_id))
    return holder == worker_id


def stop_worker(worker_id: str) -> None:
    """Mark the worker stopped (a clean exit); a killed one is known by its silence."""
    with session() as s:
        s.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(status="stopped", current_job=None))


def list_workers() -> list[WorkerRow]:
    """Every worker, oldest first; one silent for a whole lease (killed, or its machine lost) is `lost`."""
    with session() as s:
        rows = list(s.scalars(select(WorkerRow).order_by(WorkerRow.seq)).all())
    silent_since = time.time() - settings().lease_seconds
    for row in rows:
        if row.status != "stopped" and row.heartbeat_at < silent_since:
            row.status = "lost"
    return rows


def expire_lease(job_id: str, worker_id: str | None) -> None:
    """End the lease of `worker_id` (known dead) on the job now rather than when it runs out."""
    with session() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.worker_id == worker_id).values(lease_expires_at=0))


def release_expired_leases() -> list[str]:
    """Send each job whose lease ran out back: `running` to the queue, `pausing` to `paused`; either
    resumes from its newest checkpoint. Returns the jobs released. Safe for every worker to call:
    each change is conditional, so one worker releases each job."""
    now = time.time()
    expired = (JobRow.lease_expires_at.is_(None)) | (JobRow.lease_expires_at < now)
    with session() as s:
        candidates = list(
            s.execute(select(JobRow.id, JobRow.worker_id).where(JobRow.status.in_(ACTIVE_STATES), expired))
        )
    released = []
    for job_id, holder in candidates:
        same_holder = JobRow.worker_id.is_(None) if holder is None else JobRow.worker_id == holder
        for status, to, outcome in (
            ("running", "queued", "was re-queued"),
            ("pausing", "paused", "is paused"),
        ):
            with session() as s:
                result = s.execute(
                    update(JobRow)
                    .where(JobRow.id == job_id, JobRow.status == status, same_holder, expired)
                    .values(status=to, worker_id=None, lease_expires_at=None, estimated_finish=None)
                )
            if cast(CursorResult[Any], result).rowcount > 0:
                add_event(
                    job_id,
                    f"The worker running this job ({holder or 'unknown'}) stopped renewing its lease; the job "
                    f"{outcome} and will resume from its last checkpoint.",
                    level="warn",
                )
                released.append(job_id)
    return released


class Heartbeat:
    """The worker's heartbeat thread: renews its row and its job's lease until `stop`; `lost` is set
    when the job's lease turns out to be another worker's."""

    def __init__(self, worker_id: str, stop: threading.Event) -> None:
        self.worker_id = worker_id
        self.job_id: str | None = None
        self.lost = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name="tunehouse-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def hold(self, job_id: str | None) -> None:
        """Renew the lease on `job_id` from now on (None: none); the row says so at once."""
        self.job_id = job_id
        self.lost.clear()
        self.beat()

    def beat(self) -> None:
        job_id = self.job_id
        if not renew(self.worker_id, job_id) and job_id == self.job_id:
            self.lost.set()

    def _run(self) -> None:
        while not self._stop.wait(heartbeat_seconds()):
            try:
                self.beat()
            except Exception:  # a store hiccup: the next beat tries again, well within the lease
                log.exception("worker heartbeat failed")
