"""HTTP for `/fine_tuning/jobs`: create, list, retrieve, cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from tunehouse.api.fine_tuning.protocol import (
    CheckpointList,
    CreateJobRequest,
    EventList,
    FineTuningJob,
    JobCheckpoint,
    JobEvent,
    JobList,
)
from tunehouse.api.pagination import check_limit
from tunehouse.errors import InvalidRequest
from tunehouse.jobs import records, service

router = APIRouter()


@router.post("/fine_tuning/jobs")
def create_job(body: CreateJobRequest) -> dict[str, Any]:
    if body.metadata is not None and not all(isinstance(v, str) for v in body.metadata.values()):
        raise InvalidRequest("metadata values must be strings.", param="metadata")
    job = service.create_job(service.JobRequest(**body.model_dump()))
    return FineTuningJob.from_row(job).model_dump()


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """`metadata[k]=v` query pairs, as the SDK sends them."""
    pairs = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    return pairs or None


@router.get("/fine_tuning/jobs")
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20)) -> dict[str, Any]:
    page = records.list_jobs(after, check_limit(limit, 100), _metadata_filter(request))
    return JobList(data=[FineTuningJob.from_row(j) for j in page.items], has_more=page.has_more).model_dump()


@router.get("/fine_tuning/jobs/{job_id}")
def retrieve_job(job_id: str) -> dict[str, Any]:
    return FineTuningJob.from_row(records.get_job(job_id)).model_dump()


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str) -> dict[str, Any]:
    return FineTuningJob.from_row(service.cancel_job(job_id)).model_dump()


@router.post("/fine_tuning/jobs/{job_id}/pause")
def pause_job(job_id: str) -> dict[str, Any]:
    return FineTuningJob.from_row(service.pause_job(job_id)).model_dump()


@router.post("/fine_tuning/jobs/{job_id}/resume")
def resume_job(job_id: str) -> dict[str, Any]:
    return FineTuningJob.from_row(service.resume_job(job_id)).model_dump()


@router.get("/fine_tuning/jobs/{job_id}/events")
def list_events(job_id: str, after: str | None = None, limit: int = Query(20)) -> dict[str, Any]:
    page = records.list_events(job_id, after, check_limit(limit, 10_000))
    return EventList(data=[JobEvent.from_row(e) for e in page.items], has_more=page.has_more).model_dump()


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(job_id: str, after: str | None = None, limit: int = Query(10)) -> dict[str, Any]:
    page = records.list_checkpoints(job_id, after, check_limit(limit, 100))
    data = [JobCheckpoint.from_row(c) for c in page.items]
    return CheckpointList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    ).model_dump()
