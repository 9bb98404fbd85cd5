"""The wire shape of `/v1/organization/workers` (tunehouse's own: OpenAI has no workers)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from tunehouse.store.schema import WorkerRow


class Worker(BaseModel):
    id: str
    object: Literal["organization.worker"] = "organization.worker"
    host: str
    pid: int
    device: str
    gpus: int
    gpu_memory_mb: int | None
    started_at: int
    last_heartbeat_at: float
    current_job: str | None
    status: Literal["idle", "busy", "stopped", "lost"]

    @classmethod
    def from_row(cls, row: WorkerRow) -> Worker:
        return cls(
            id=row.id,
            host=row.host,
            pid=row.pid,
            device=row.device,
            gpus=row.gpus,
            gpu_memory_mb=row.gpu_memory_mb,
            started_at=row.started_at,
            last_heartbeat_at=row.heartbeat_at,
            current_job=row.current_job,
            status=row.status,  # type: ignore[arg-type]  # one of them: the store writes only these
        )


class WorkerList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Worker]
