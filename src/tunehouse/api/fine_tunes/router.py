"""HTTP for the legacy `/fine-tunes`: create, list, retrieve, cancel, delete (its model), and events,
streamed as server-sent events until the job ends when `stream=true` (what `fine_tunes.follow` reads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tunehouse.api.fine_tunes.protocol import CreateFineTuneRequest, legacy_event, legacy_fine_tune
from tunehouse.api.sse import sse_stream
from tunehouse.errors import InvalidRequest
from tunehouse.jobs import records, service

router = APIRouter()
POLL_SECONDS = 0.5
# Threads the followers may borrow at once to read the store: however many follow, the threads that
# serve other routes stay free.
FOLLOWER_READS = CapacityLimiter(2)


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
            compute_classification_metrics=body.compute_classification_metrics,
            classification_n_classes=body.classification_n_classes,
            classification_positive_class=body.classification_positive_class,
            classification_betas=body.classification_betas,
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


def _read_events(job_id: str, seq: int) -> tuple[bool, int, list[dict[str, Any]]]:
    """Whether the job had ended, then its events after `seq` (read after, so none is missed) and the
    last one's number."""
    finished = records.get_job(job_id).status in records.TERMINAL_STATES
    events = records.events_after(job_id, seq)
    return finished, events[-1].seq if events else seq, [legacy_event(event) for event in events]


async def _follow(job_id: str, request: Request) -> AsyncIterator[dict[str, Any] | None]:
    """The job's events as they are written, until it ends or the client hangs up; None while there is
    nothing new (the stream's chance to send a keep-alive). The follower sleeps on the event loop and
    borrows a thread only to read the store."""
    seq = 0
    while not await request.is_disconnected():
        finished, seq, events = await to_thread.run_sync(_read_events, job_id, seq, limiter=FOLLOWER_READS)
        for event in events:
            yield event
        if finished:
            return
        yield None
        await asyncio.sleep(POLL_SECONDS)


@router.get("/fine-tunes/{job_id}/events", response_model=None)
def fine_tune_events(job_id: str, request: Request, stream: bool = False) -> dict[str, Any] | StreamingResponse:
    records.get_job(job_id)
    if stream:
        return StreamingResponse(sse_stream(_follow(job_id, request)), media_type="text/event-stream")
    return {"object": "list", "data": [legacy_event(e) for e in records.all_events(job_id)]}
