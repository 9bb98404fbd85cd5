"""The worker: validates new jobs, claims queued ones and runs each trainer in a child process.

A child process means a crash (or an out-of-memory kill) fails one job, not the server, and a cancel
can stop training at once by terminating the process. The store is the only channel between them.
With several GPUs (or `training.processes`) the child is `accelerate launch`, which starts one
trainer process per GPU (`jobs/launch.py`); a cancel stops all of them.

Several workers (on one machine or many: `tunehouse worker`, sharing one database and one blob root)
each claim jobs that fit their machine (`jobs/claims.py`) and hold them under a lease renewed by a
heartbeat thread (`jobs/leases.py`); a job whose worker vanished goes back to the queue once its
lease runs out, and whoever claims it next resumes it from its newest checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
from sqlalchemy import select

from tunehouse.config import settings
from tunehouse.errors import TunehouseError
from tunehouse.jobs.claims import claim_next_job, claim_validation
from tunehouse.jobs.delivery import start_sender_thread
from tunehouse.jobs.evals import EvalRunner, queue_job_eval_safely
from tunehouse.jobs.launch import (
    is_alive,
    launch_environment,
    pause_file,
    pid_alive,
    process_count,
    process_identity,
    trainer_command,
)
from tunehouse.jobs.leases import (
    Capacity,
    Heartbeat,
    expire_lease,
    register_worker,
    release_expired_leases,
    stop_worker,
    this_machine,
)
from tunehouse.jobs.records import ACTIVE_STATES, add_event, get_job, update_job
from tunehouse.jobs.service import fail_job, validate_job_files
from tunehouse.serve.engine import Engine
from tunehouse.store.db import session
from tunehouse.store.schema import JobRow

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
TERMINATE_GRACE_SECONDS = 3
TRAINER_FILE = "trainer.pid"
"""In a job's folder: the identity (`PID:START_TIME`) of the trainer process last started for it."""


def validate_pending_jobs(worker_id: str) -> None:
    """Validate the files of each new job, one worker per job (`claim_validation`)."""
    while (job_id := claim_validation(worker_id)) is not None:
        try:
            if validate_job_files(job_id):
                add_event(job_id, "Files validated, moving job to queued state")
        except Exception as exc:  # a validator bug must not kill the worker; it fails the one job
            log.exception("validation of %s crashed", job_id)
            fail_job(job_id, "validation_error", f"File validation failed unexpectedly: {exc}")


def _trainer_file(job_id: str) -> Path:
    return settings().jobs_dir / job_id / TRAINER_FILE


def stop_leftover_trainer(job_id: str) -> None:
    """Kill the trainer a dead worker started for `job_id`, if it still runs.

    Trainers exit by themselves when their worker is gone (`launch.exit_with_worker`); this makes
    sure of it before the job is run again, so no trainer runs that the store does not know of.
    """
    path = _trainer_file(job_id)
    try:
        identity = path.read_text().strip()
    except OSError:
        return
    if is_alive(identity):
        pid = int(identity.partition(":")[0])
        log.warning("stopping the leftover trainer %s of job %s", pid, job_id)
        with contextlib.suppress(psutil.NoSuchProcess):
            _stop_tree(psutil.Process(pid))
    path.unlink(missing_ok=True)


def set_aside(job_id: str, why: str) -> None:
    """A job whose trainer stopped early for `why`: a running one goes back to the queue, a pausing
    one is paused; either continues from its newest checkpoint when it runs again."""
    released = {"worker_id": None, "lease_expires_at": None}
    if update_job(job_id, only_if_status={"running"}, status="queued", **released):
        add_event(job_id, f"{why}; the job was re-queued and will resume from its last checkpoint.", level="warn")
    elif update_job(job_id, only_if_status={"pausing"}, status="paused", estimated_finish=None, **released):
        add_event(job_id, f"{why}; the job is paused and will resume from its last checkpoint.", level="warn")


def requeue_orphaned_jobs() -> None:
    """Jobs left `running` by a worker that died go back to the queue (`pausing` ones are paused).

    A worker of this machine that is gone is known dead at once: its leftover trainer is stopped and
    its lease ended now. Other machines' workers are known dead when their lease runs out. The
    trainer resumes a re-queued job from its newest complete checkpoint (weights, optimizer,
    scheduler, RNG and data position), so it ends as if it had never stopped (PITFALLS 1).
    """
    host = socket.gethostname()
    with session() as s:
        running = list(s.scalars(select(JobRow).where(JobRow.status.in_(ACTIVE_STATES))).all())
    for job in running:
        if job.worker_host == host and job.worker_pid is not None and not pid_alive(job.worker_pid):
            stop_leftover_trainer(job.id)
            expire_lease(job.id, job.worker_id)
    release_expired_leases()


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def run_claimed_job(job_id: str, heartbeat: Heartbeat, stop: threading.Event | None = None) -> None:
    """Run the trainer child for a claimed job and watch it until it ends, the job is cancelled, or
    its lease is lost (another worker took the job over: this one must not train it too)."""
    training = get_job(job_id).training_options or {}
    try:
        processes = process_count(training.get("processes"), training.get("device"))
    except TunehouseError as exc:
        fail_job(job_id, exc.code or "training_failed", exc.message, exc.param)
        return
    log_path = settings().jobs_dir / job_id / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pause_file(job_id).unlink(missing_ok=True)  # asked of an earlier trainer of this job, and done
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            trainer_command(job_id, processes),
            env=launch_environment(processes, training.get("device")),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _trainer_file(job_id).write_text(process_identity(child.pid))
    while child.poll() is None:
        status = get_job(job_id).status
        lost = heartbeat.lost.is_set()
        if status == "cancelled" or lost or (stop is not None and stop.is_set()):
            if lost:
                log.error("the lease on job %s was lost to another worker; stopping its trainer here", job_id)
            _terminate(child)
            break
        if status == "pausing":  # the trainer checkpoints and stops at its next step boundary
            pause_file(job_id).touch()
        validate_pending_jobs(heartbeat.worker_id)
        time.sleep(POLL_SECONDS)
    code = child.wait()
    _trainer_file(job_id).unlink(missing_ok=True)
    pause_file(job_id).unlink(missing_ok=True)
    if heartbeat.lost.is_set():
        return  # the job is another worker's now
    if code == 0:
        queue_job_eval_safely(job_id)  # base vs fine-tuned on its validation file, if it has one
    if code != 0 and get_job(job_id).status in ACTIVE_STATES:
        if stop is not None and stop.is_set():
            set_aside(job_id, "The server stopped during training")
            return
        fail_job(
            job_id,
            "training_failed",
            f"The training process exited with code {code}. Last log lines:\n{_log_tail(log_path)}",
        )


def _terminate(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the trainer's process group and every process below it, then SIGKILL what is left.

    torchrun (under `accelerate launch`) starts each trainer process in a session of its own, so
    the launcher's group does not hold them: they are found as its descendants before it goes.
    """
    try:
        below = psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    _signal_all(child.pid, below, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=TERMINATE_GRACE_SECONDS)
    _, alive = psutil.wait_procs(below, timeout=1)
    if child.poll() is None or alive:
        _signal_all(child.pid, alive, signal.SIGKILL)
        child.wait()


def _stop_tree(leader: psutil.Process) -> None:
    """`_terminate` for a trainer this process did not start (another worker's child)."""
    everyone = [leader, *leader.children(recursive=True)]
    _signal_all(leader.pid, everyone, signal.SIGTERM)
    _, alive = psutil.wait_procs(everyone, timeout=TERMINATE_GRACE_SECONDS)
    if alive:
        _signal_all(leader.pid, alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)


def _signal_all(group: int, processes: list[psutil.Process], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)


def work_once(
    heartbeat: Heartbeat, capacity: Capacity, stop: threading.Event | None = None, evals: EvalRunner | None = None
) -> bool:
    """Validate what is new, then run one queued eval run or else one queued job that fits this
    machine, if there is one. Returns whether it ran one. Eval runs go first: someone usually waits on
    them, and the eval a job queues when it succeeds then runs before the next job starts."""
    validate_pending_jobs(heartbeat.worker_id)
    if evals is not None and evals.run_next(stop):
        return True
    release_expired_leases()
    job_id = claim_next_job(heartbeat.worker_id, capacity)
    if job_id is None:
        return False
    heartbeat.hold(job_id)
    try:
        run_claimed_job(job_id, heartbeat, stop)
    finally:
        heartbeat.hold(None)
    return True


def run_worker_forever(stop: threading.Event | None = None, engine: Engine | None = None) -> None:
    """Work until `stop`; eval runs generate on `engine` (the server's), else on an engine of their own."""
    stop = stop or threading.Event()
    capacity = this_machine()
    worker_id = register_worker(capacity)
    log.info("worker %s: %s with %d GPUs", worker_id, capacity.device, capacity.gpus)
    heartbeat = Heartbeat(worker_id, stop).start()
    requeue_orphaned_jobs()
    start_sender_thread(stop)  # webhook events and emails, beside the jobs and never in their way
    evals = EvalRunner(engine)
    try:
        while not stop.is_set():
            try:
                if not work_once(heartbeat, capacity, stop, evals):
                    time.sleep(POLL_SECONDS)
            except Exception:  # keep serving other jobs; the failure is already recorded on its job
                log.exception("worker loop error")
                time.sleep(POLL_SECONDS)
    finally:
        stop_worker(worker_id)


def start_worker_thread(engine: Engine | None = None) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=run_worker_forever, args=(stop, engine), name="tunehouse-worker", daemon=True)
    thread.start()
    return thread, stop
