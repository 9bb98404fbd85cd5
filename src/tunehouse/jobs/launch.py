"""How the worker starts a job's trainer: one process, or several under `accelerate launch`.

One process is the plain `python -m tunehouse.jobs.run JOB_ID`. Several are started by
accelerate's launcher (torchrun underneath), one rank per GPU; on a machine without CUDA they are
CPU processes that talk over gloo (`distributed.py` asks accelerate for that in each process:
accelerate's own `--cpu` flag would start a single process without an MPI launcher).
"""

from __future__ import annotations

import os
import sys

import torch

from tunehouse.config import settings
from tunehouse.errors import InvalidValue

RUNNER = "tunehouse.jobs.run"


def process_count(requested: int | None) -> int:
    """The job's `training.processes`, else `TUNEHOUSE_TRAIN_PROCESSES`, else every visible GPU (one on CPU)."""
    count = requested or settings().train_processes or torch.cuda.device_count() or 1
    gpus = torch.cuda.device_count()
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


def launch_environment(processes: int) -> dict[str, str]:
    """The trainer's environment: the machine's cores shared out between its processes (torchrun
    would give each one thread), unless OMP_NUM_THREADS says otherwise."""
    env = dict(os.environ)
    if processes > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return env


def trainer_command(job_id: str, processes: int) -> list[str]:
    return launch_command(processes, RUNNER, job_id)
