"""HTTP for the legacy `/fine-tunes`: create, list, retrieve, cancel, delete (its model), and events,
streamed as server-sent events until the job ends when `stream=true` (what `fine_tunes.follow` reads)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tunehouse.api.fine_tunes.protocol import CreateFineTuneRequest, legacy_event, legacy_fine_tune
from tunehouse.api.sse import sse_stream
from tunehouse.errors import InvalidRequest
from tunehouse.jobs import records, service

router = APIRouter()
POLL_SECONDS = 0.5


@router.post("/fine-tunes")
def create_fine_tune(body: CreateFineTuneRequest) -> dict[str, Any]:
    hyperparameters = {
        k: v
        for k, v in {
            "n_epochs": body.n_epochs,
            "batch_size": body.batch_size,
            "learning_rate_multiplier": body.learning_rate_multiplier,
        }.items()
        if v is not None
    }
    job = service.create_job(
        service.JobRequest(
            model=body.model,
            training_file=body.training_file,
            validation_file=body.validation_file,
            hyperparameters=hyperparameters or None,
            suffix=body.suffix,
        )
    )
    return legacy_fine_tune(job)


@router.get("/fine-tunes")
def list_fine_tunes() -> dict[str, Any]:
    page = records.list_jobs(None, 100, None)
    return {"object": "list", "data": [legacy_fine_tune(j, with_events=False) for j in page.items]}


@router.get("/fine-tunes/{job_id}")
def retrieve_fine_tune(job_id: str) -> dict[str, Any]:
    return legacy_fine_tune(records.get_job(job_id))


@router.post("/fine-tunes/{job_id}/cancel")
def cancel_fine_tune(job_id: str) -> dict[str, Any]:
    return legacy_fine_tune(service.cancel_job(job_id))


@router.delete("/fine-tunes/{job_id}")
def delete_fine_tune(job_id: str, request: Request) -> dict[str, Any]:
    """The 0.x SDK's `FineTune.delete` removes the fine-tuned model the job made, as `DELETE /models` does."""
    job = records.get_job(job_id)
    if job.fine_tuned_model is None:
        raise InvalidRequest(f"Fine-tune {job_id} has no fine-tuned model to delete.", param="fine_tune_id")
    request.app.state.engine.delete(job.fine_tuned_model)
    return {"id": job.fine_tuned_model, "object": "model", "deleted": True}


def _follow(job_id: str) -> Iterator[dict[str, Any]]:
    seq = 0
    while True:
        finished = records.get_job(job_id).status in records.TERMINAL_STATES
        for event in records.events_after(job_id, seq):
            seq = event.seq
            yield legacy_event(event)
        if finished:
            return
        time.sleep(POLL_SECONDS)


@router.get("/fine-tunes/{job_id}/events", response_model=None)
def fine_tune_events(job_id: str, stream: bool = False) -> dict[str, Any] | StreamingResponse:
    records.get_job(job_id)
    if stream:
        return StreamingResponse(sse_stream(_follow(job_id)), media_type="text/event-stream")
    return {"object": "list", "data": [legacy_event(e) for e in records.all_events(job_id)]}
