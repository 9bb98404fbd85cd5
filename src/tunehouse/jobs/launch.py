"""How the worker starts a job's trainer: one process, or several under `accelerate launch`.

One process is the plain `python -m tunehouse.jobs.run JOB_ID`. Several are started by
accelerate's launcher (torchrun underneath), one rank per GPU; on a machine without CUDA they are
CPU processes that talk over gloo (`distributed.py` asks accelerate for that in each process:
accelerate's own `--cpu` flag would start a single process without an MPI launcher).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

from tunehouse.config import settings
from tunehouse.errors import InvalidValue

RUNNER = "tunehouse.jobs.run"
WORKER_ENV = "TUNEHOUSE_WORKER_PROCESS"
"""The worker that started a trainer, as `PID:START_TIME`: the trainer lives only as long as it does."""
WATCH_SECONDS = 1.0
PAUSE_FILE = "pause"

log = logging.getLogger(__name__)


def process_count(requested: int | None, device: str | None = None) -> int:
    """The job's `training.processes`, else `TUNEHOUSE_TRAIN_PROCESSES`, else every visible GPU (one on
    CPU, and for a job whose `training.device` is `cpu`)."""
    gpus = 0 if device == "cpu" else torch.cuda.device_count()
    count = requested or settings().train_processes or gpus or 1
    if gpus and count > gpus:
        raise InvalidValue(
            f"training.processes is {count} but this machine has {gpus} CUDA GPUs: one process per GPU at most.",
            param="training.processes",
        )
    return count


def launch_command(processes: int, module: str, *args: str) -> list[str]:
    """`python -m MODULE ARGS` in `processes` processes: directly for one, else through accelerate."""
    if processes == 1:
        return [sys.executable, "-m", module, *args]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # torchrun's launcher; each process picks CUDA (NCCL) or CPU (gloo) itself
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",  # the trainer chooses bf16 autocast itself
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",  # a free port, so jobs and tests never collide
        "-m",
        module,
        *args,
    ]


def process_identity(pid: int) -> str:
    """`PID:START_TIME`: a process, told apart from a later one that reuses its pid."""
    return f"{pid}:{psutil.Process(pid).create_time():.3f}"


def is_alive(identity: str) -> bool:
    """Whether the process `process_identity` named is still running (a zombie is not)."""
    pid, _, started = identity.partition(":")
    try:
        process = psutil.Process(int(pid))
        return f"{process.create_time():.3f}" == started and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):
        return False


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (someone else's counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exit_with_worker() -> None:
    """In a trainer process: exit at once when the worker that started it is gone.

    A worker that is killed (SIGKILL, a crash) cannot stop its trainer, which runs in a session of
    its own; left alone the trainer would train on as an orphan that no cancel reaches. The next
    worker on the same store re-queues the job and resumes it from its last checkpoint.
    """
    worker = os.environ.get(WORKER_ENV)
    if not worker:
        return

    def watch() -> None:
        while is_alive(worker):
            time.sleep(WATCH_SECONDS)
        log.error("the worker that started this trainer is gone; stopping")
        os._exit(1)

    threading.Thread(target=watch, name="tunehouse-worker-watch", daemon=True).start()


def launch_environment(processes: int, device: str | None = None) -> dict[str, str]:
    """The trainer's environment: its worker's identity (`exit_with_worker`), no GPU for a job whose
    `training.device` is `cpu`, and the machine's cores but those serving keeps
    (TUNEHOUSE_SERVE_THREADS) shared out between its processes (torchrun would give each one thread)
    unless OMP_NUM_THREADS says otherwise."""
    env = dict(os.environ)
    env[WORKER_ENV] = process_identity(os.getpid())
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cores = max(1, (os.cpu_count() or 1) - settings().serve_threads)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // processes)))
    return env


def trainer_command(job_id: str, processes: int) -> list[str]:
    return launch_command(processes, RUNNER, job_id)


def pause_file(job_id: str) -> Path:
    """In a job's folder: written by the worker to ask the job's trainer to checkpoint and stop at its
    next step boundary (`SFTConfig.pause_file`); removed before a trainer starts for the job."""
    return settings().jobs_dir / job_id / PAUSE_FILE
