"""The durable outbox of notifications: webhook events and emails waiting to be delivered.

Whatever ends a job or an eval run queues its notifications with `queue_event` inside the same
transaction as the status change, so an end that commits always has them and one that rolls back
never does (a transactional outbox). A sender (`jobs/delivery.py`) claims due rows for a while,
tries each, and records every attempt; a failed one waits longer each time until it is too old.
Everything here is rows; how a delivery is made (HTTP, SMTP) lives in `jobs/`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from tunehouse.ids import new_id
from tunehouse.store.db import session
from tunehouse.store.pages import Page, page_newest_first
from tunehouse.store.schema import DeliveryAttemptRow, EvalRow, EvalRunRow, OutboxRow, WebhookEndpointRow

JOB_EVENTS = {
    "succeeded": "fine_tuning.job.succeeded",
    "failed": "fine_tuning.job.failed",
    "cancelled": "fine_tuning.job.cancelled",
}
"""A fine-tuning job's end state → OpenAI's webhook event type."""
EVAL_RUN_EVENTS = {"completed": "eval.run.succeeded", "failed": "eval.run.failed", "canceled": "eval.run.canceled"}
"""An eval run's end state → OpenAI's webhook event type."""
EVENT_TYPES = (*JOB_EVENTS.values(), *EVAL_RUN_EVENTS.values())
"""Every event type this server sends."""


@dataclass(frozen=True)
class Email:
    """An email to queue: to whom, and what it says."""

    recipient: str
    subject: str
    text: str


def queue_event(
    s: Session, event_type: str, subject_id: str, emails: tuple[Email, ...] = (), *, project_id: str | None = None
) -> str:
    """In the caller's transaction: an event of `event_type` about `subject_id` (a job or run id of
    project `project_id`, None: the default project) for every endpoint of that project subscribed
    to it, in OpenAI's payload shape, plus `emails`. Returns its id."""
    now = int(time.time())
    event_id = new_id("evt_")
    payload = {"id": event_id, "object": "event", "created_at": now, "type": event_type, "data": {"id": subject_id}}
    common = {
        "event_id": event_id,
        "event_type": event_type,
        "subject_id": subject_id,
        "created_at": now,
        "project_id": project_id,
    }
    owner = WebhookEndpointRow.project_id
    endpoints = s.scalars(
        select(WebhookEndpointRow).where(owner.is_(None) if project_id is None else owner == project_id)
    )
    for endpoint in endpoints:
        if event_type in endpoint.event_types:
            s.add(_row(common, channel="webhook", endpoint_id=endpoint.id, payload=payload))
    for email in emails:
        body = {"subject": email.subject, "text": email.text}
        s.add(_row(common, channel="email", recipient=email.recipient, payload=body))
    return event_id


def queue_eval_run_ended(s: Session, run_id: str, status: str) -> None:
    """For the Evals API: call in the transaction that moves run `run_id` to an end `status`
    (`completed`, `failed` or `canceled`), and its `eval.run.*` webhooks go out."""
    if status in EVAL_RUN_EVENTS:
        run_eval = select(EvalRunRow.eval_id).where(EvalRunRow.id == run_id).scalar_subquery()
        project_id = s.scalar(select(EvalRow.project_id).where(EvalRow.id == run_eval))
        queue_event(s, EVAL_RUN_EVENTS[status], run_id, project_id=project_id)


def _row(common: dict[str, Any], **values: Any) -> OutboxRow:
    return OutboxRow(id=new_id("whdel_"), status="pending", attempts=0, next_attempt_at=time.time(), **common, **values)


def claim_due(now: float, limit: int, hold_s: float) -> list[OutboxRow]:
    """Pending rows whose next attempt is due and that no sender holds, now held by this one for
    `hold_s` seconds (so two senders never try one row at once), oldest first."""
    with session() as s:
        query = (
            select(OutboxRow.id)
            .where(OutboxRow.status == "pending", OutboxRow.next_attempt_at <= now)
            .where(or_(OutboxRow.claimed_until.is_(None), OutboxRow.claimed_until < now))
            .order_by(OutboxRow.next_attempt_at)
            .limit(limit)
        )
        candidates = list(s.scalars(query).all())
    claimed = []
    for delivery_id in candidates:
        with session() as s:
            result = s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == delivery_id, OutboxRow.status == "pending")
                .where(or_(OutboxRow.claimed_until.is_(None), OutboxRow.claimed_until < now))
                .values(claimed_until=now + hold_s)
            )
            if cast(CursorResult[Any], result).rowcount:
                claimed.append(s.scalars(select(OutboxRow).where(OutboxRow.id == delivery_id)).one())
    return claimed


def record_attempt(
    delivery_id: str,
    *,
    success: bool,
    response_status_code: int | None,
    error: str | None,
    retry_at: float | None,
) -> None:
    """One attempt's outcome; the row is delivered, or waits until `retry_at`, or (None) has failed for good."""
    now = time.time()
    if success:
        values: dict[str, Any] = {"status": "delivered", "delivered_at": int(now), "next_attempt_at": None}
    elif retry_at is None:
        values = {"status": "failed", "next_attempt_at": None}
    else:
        values = {"next_attempt_at": retry_at}
    with session() as s:
        s.add(
            DeliveryAttemptRow(
                delivery_id=delivery_id,
                attempted_at=now,
                success=success,
                response_status_code=response_status_code,
                error=error,
            )
        )
        s.execute(
            update(OutboxRow)
            .where(OutboxRow.id == delivery_id)
            .values(attempts=OutboxRow.attempts + 1, claimed_until=None, **values)
        )


def deliveries_to(endpoint_id: str, after: str | None, limit: int) -> Page[OutboxRow]:
    """An endpoint's deliveries, newest first."""
    return page_newest_first(select(OutboxRow).where(OutboxRow.endpoint_id == endpoint_id), OutboxRow, after, limit)


def deliveries_about(subject_id: str) -> list[OutboxRow]:
    """Every delivery about one job or run (webhooks and emails), oldest first."""
    with session() as s:
        query = select(OutboxRow).where(OutboxRow.subject_id == subject_id).order_by(OutboxRow.seq)
        return list(s.scalars(query).all())


def attempts_of(delivery_ids: list[str]) -> dict[str, list[DeliveryAttemptRow]]:
    """Each delivery's attempts, oldest first."""
    found: dict[str, list[DeliveryAttemptRow]] = {delivery_id: [] for delivery_id in delivery_ids}
    with session() as s:
        query = (
            select(DeliveryAttemptRow)
            .where(DeliveryAttemptRow.delivery_id.in_(delivery_ids))
            .order_by(DeliveryAttemptRow.seq)
        )
        for attempt in s.scalars(query).all():
            found[attempt.delivery_id].append(attempt)
    return found
