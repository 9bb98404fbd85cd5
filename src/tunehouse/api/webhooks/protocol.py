"""Wire shapes of `/webhook_endpoints`, as the SDK's `client.webhooks` reads them (`WebhookEndpoint`,
`WebhookEndpointWithSecret`, `DeletedWebhookEndpoint`), and tunehouse's own delivery log."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from tunehouse.api.request import OpenAIRequest
from tunehouse.jobs.webhooks import secret_hint
from tunehouse.store.schema import DeliveryAttemptRow, OutboxRow, WebhookEndpointRow


class CreateEndpointRequest(OpenAIRequest):
    name: Any = None
    url: Any = None
    event_types: Any = None


class UpdateEndpointRequest(OpenAIRequest):
    name: Any = None
    url: Any = None
    event_types: Any = None


class RotateSecretRequest(OpenAIRequest):
    keep_old_secret_active_for_24_hours: bool = False


class WebhookEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int
    name: str
    url: str
    event_types: list[str]
    signing_secret_hint: str

    @classmethod
    def from_row(cls, row: WebhookEndpointRow) -> WebhookEndpoint:
        return cls(
            id=row.id,
            created_at=row.created_at,
            updated_at=row.updated_at,
            name=row.name,
            url=row.url,
            event_types=row.event_types,
            signing_secret_hint=secret_hint(row.secret),
        )


class WebhookEndpointWithSecret(WebhookEndpoint):
    signing_secret: str
    """Shown when the endpoint is created or its secret rotated, never again."""

    @classmethod
    def with_secret(cls, row: WebhookEndpointRow) -> WebhookEndpointWithSecret:
        return cls(**WebhookEndpoint.from_row(row).model_dump(), signing_secret=row.secret)


class EndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpoint]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class EventTypeList(BaseModel):
    object: Literal["list"] = "list"
    data: list[str]


class DeliveryAttempt(BaseModel):
    attempted_at: float
    success: bool
    response_status_code: int | None
    """The HTTP status the endpoint answered (None when it was not reached)."""
    error: str | None

    @classmethod
    def from_row(cls, row: DeliveryAttemptRow) -> DeliveryAttempt:
        return cls(
            attempted_at=row.attempted_at,
            success=row.success,
            response_status_code=row.response_status_code,
            error=row.error,
        )


class Delivery(BaseModel):
    """tunehouse's own: one event sent (or being sent) to an endpoint, with every attempt."""

    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str
    event_type: str
    channel: str
    """webhook or email."""
    endpoint_id: str | None
    recipient: str | None
    """The email address (an email's delivery)."""
    data: dict[str, Any]
    created_at: int
    status: str
    """pending (being tried), delivered, or failed (given up)."""
    next_attempt_at: float | None
    attempts: list[DeliveryAttempt]

    @classmethod
    def from_row(cls, row: OutboxRow, attempts: list[DeliveryAttemptRow]) -> Delivery:
        return cls(
            id=row.id,
            event_id=row.event_id,
            event_type=row.event_type,
            channel=row.channel,
            endpoint_id=row.endpoint_id,
            recipient=row.recipient,
            data=row.payload.get("data", {}),
            created_at=row.created_at,
            status=row.status,
            next_attempt_at=row.next_attempt_at,
            attempts=[DeliveryAttempt.from_row(a) for a in attempts],
        )


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Delivery]
    has_more: bool
