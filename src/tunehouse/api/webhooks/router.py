"""HTTP for `/webhook_endpoints` (OpenAI's routes: create, list, retrieve, update, delete,
rotate_secret; `/webhook_event_types`) and tunehouse's own delivery logs: an endpoint's
(`/webhook_endpoints/{id}/deliveries`) and a job's, webhooks and emails (`/fine_tuning/jobs/{id}/deliveries`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from tunehouse.api.pagination import check_limit
from tunehouse.api.webhooks.protocol import (
    CreateEndpointRequest,
    DeletedEndpoint,
    Delivery,
    DeliveryList,
    EndpointList,
    EventTypeList,
    RotateSecretRequest,
    UpdateEndpointRequest,
    WebhookEndpoint,
    WebhookEndpointWithSecret,
)
from tunehouse.jobs import records, webhooks
from tunehouse.store import outbox
from tunehouse.store.schema import OutboxRow

router = APIRouter()


@router.post("/webhook_endpoints")
def create_endpoint(body: CreateEndpointRequest) -> dict[str, Any]:
    row = webhooks.create_endpoint(body.name, body.url, body.event_types)
    return WebhookEndpointWithSecret.with_secret(row).model_dump()


@router.get("/webhook_endpoints")
def list_endpoints(after: str | None = None, limit: int = Query(20)) -> dict[str, Any]:
    page = webhooks.list_endpoints(after, check_limit(limit, 100))
    data = [WebhookEndpoint.from_row(row) for row in page.items]
    return EndpointList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    ).model_dump()


@router.get("/webhook_endpoints/{endpoint_id}")
def retrieve_endpoint(endpoint_id: str) -> dict[str, Any]:
    return WebhookEndpoint.from_row(webhooks.get_endpoint(endpoint_id)).model_dump()


@router.post("/webhook_endpoints/{endpoint_id}")
def update_endpoint(endpoint_id: str, body: UpdateEndpointRequest) -> dict[str, Any]:
    row = webhooks.update_endpoint(endpoint_id, name=body.name, url=body.url, event_types=body.event_types)
    return WebhookEndpoint.from_row(row).model_dump()


@router.delete("/webhook_endpoints/{endpoint_id}")
def delete_endpoint(endpoint_id: str) -> dict[str, Any]:
    webhooks.delete_endpoint(endpoint_id)
    return DeletedEndpoint(id=endpoint_id).model_dump()


@router.post("/webhook_endpoints/{endpoint_id}/rotate_secret")
def rotate_secret(endpoint_id: str, body: RotateSecretRequest | None = None) -> dict[str, Any]:
    keep = body.keep_old_secret_active_for_24_hours if body is not None else False
    return WebhookEndpointWithSecret.with_secret(webhooks.rotate_secret(endpoint_id, keep)).model_dump()


@router.get("/webhook_event_types")
def list_event_types() -> dict[str, Any]:
    return EventTypeList(data=list(outbox.EVENT_TYPES)).model_dump()


@router.get("/webhook_endpoints/{endpoint_id}/deliveries")
def list_deliveries(endpoint_id: str, after: str | None = None, limit: int = Query(20)) -> dict[str, Any]:
    webhooks.get_endpoint(endpoint_id)
    page = outbox.deliveries_to(endpoint_id, after, check_limit(limit, 100))
    return _delivery_list(page.items, page.has_more)


def _delivery_list(rows: list[OutboxRow], has_more: bool) -> dict[str, Any]:
    attempts = outbox.attempts_of([row.id for row in rows])
    return DeliveryList(data=[Delivery.from_row(row, attempts[row.id]) for row in rows], has_more=has_more).model_dump()


@router.get("/fine_tuning/jobs/{job_id}/deliveries")
def list_job_deliveries(job_id: str) -> dict[str, Any]:
    """Every notification about one job (webhooks and emails), oldest first, with their attempts."""
    records.get_job(job_id)  # 404 for a job this key's project does not own
    return _delivery_list(outbox.deliveries_about(job_id), has_more=False)
