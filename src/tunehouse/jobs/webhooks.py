"""Webhook endpoints (`/v1/webhook_endpoints`, OpenAI's shapes) and how their deliveries are signed.

An endpoint is a URL, the event types it wants and a secret (`whsec_` + base64 of 32 random bytes)
shown once, at creation or rotation. Deliveries are signed per Standard Webhooks: `webhook-id`,
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
keyed with the secret's decoded bytes, so the SDK's `client.webhooks.unwrap()` (or the
`standardwebhooks` library) verifies them. Only http(s) URLs are taken; loopback and private
addresses need the operator's TUNEHOUSE_ALLOWED_OUTBOUND (`integrations.check_endpoint`), checked
when the endpoint is saved and again before each delivery, whose connection goes to the address
checked (DNS rebinding).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any

from sqlalchemy import delete, select

from tunehouse.errors import InvalidRequest, NotFound
from tunehouse.ids import new_id
from tunehouse.jobs.integrations import Address, check_endpoint
from tunehouse.store.db import session
from tunehouse.store.outbox import EVENT_TYPES
from tunehouse.store.pages import Page, page_newest_first
from tunehouse.store.projects import owner, visible
from tunehouse.store.schema import WebhookEndpointRow

MAX_NAME = 256
MAX_URL = 2048
PREVIOUS_SECRET_SECONDS = 24 * 3600
"""How long a rotated-out secret still signs deliveries when asked to stay active."""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str) -> str:
    """What OpenAI calls the `signing_secret_hint`: enough to tell two secrets apart, not to use one."""
    return f"whsec_…{secret[-4:]}"


def check_url(url: Any, param: str = "url") -> list[Address]:
    """The addresses a delivery to `url` may connect to; a 400 naming `param` if none may be used."""
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise InvalidRequest(f"{param} must be an http(s):// URL of at most {MAX_URL} characters.", param=param)
    return check_endpoint(url, param, public_hosts=True)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME:
        raise InvalidRequest(f"name must be a non-empty string of at most {MAX_NAME} characters.", param="name")
    return name


def _check_event_types(event_types: Any) -> list[str]:
    if not isinstance(event_types, list) or not event_types:
        raise InvalidRequest("event_types must be a non-empty list of event types.", param="event_types")
    for index, event_type in enumerate(event_types):
        if event_type not in EVENT_TYPES:
            raise InvalidRequest(
                f"event_types[{index}]: {event_type!r} is not an event this server sends. It sends: "
                f"{', '.join(EVENT_TYPES)}.",
                param=f"event_types[{index}]",
            )
    return list(dict.fromkeys(event_types))


def create_endpoint(name: Any, url: Any, event_types: Any) -> WebhookEndpointRow:
    """A new endpoint; the row holds its secret, which the API shows this once."""
    name, event_types = _check_name(name), _check_event_types(event_types)
    check_url(url)
    now = int(time.time())
    row = WebhookEndpointRow(
        id=new_id("we_"),
        name=name,
        url=url,
        event_types=event_types,
        secret=new_secret(),
        created_at=now,
        updated_at=now,
        project_id=owner(),
    )
    with session() as s:
        s.add(row)
    return row


def get_endpoint(endpoint_id: str) -> WebhookEndpointRow:
    row = find_endpoint(endpoint_id)
    if row is None:
        raise NotFound(f"No such webhook endpoint: {endpoint_id}", param="webhook_endpoint_id")
    return row


def find_endpoint(endpoint_id: str) -> WebhookEndpointRow | None:
    with session() as s:
        query = select(WebhookEndpointRow).where(WebhookEndpointRow.id == endpoint_id)
        return s.scalar(query.where(visible(WebhookEndpointRow.project_id)))


def list_endpoints(after: str | None, limit: int) -> Page[WebhookEndpointRow]:
    query = select(WebhookEndpointRow).where(visible(WebhookEndpointRow.project_id))
    return page_newest_first(query, WebhookEndpointRow, after, limit)


def update_endpoint(
    endpoint_id: str, *, name: Any = None, url: Any = None, event_types: Any = None
) -> WebhookEndpointRow:
    """Change what is given (None: unchanged); `updated_at` moves only when something changed."""
    row = get_endpoint(endpoint_id)
    changes: dict[str, Any] = {}
    if name is not None and _check_name(name) != row.name:
        changes["name"] = name
    if url is not None and url != row.url:
        check_url(url)
        changes["url"] = url
    if event_types is not None and (checked := _check_event_types(event_types)) != row.event_types:
        changes["event_types"] = checked
    return _save(row, changes)


def rotate_secret(endpoint_id: str, keep_old_secret_active_for_24_hours: bool = False) -> WebhookEndpointRow:
    """A new secret; the old one also signs deliveries for 24 hours if asked (a second `v1,` signature)."""
    row = get_endpoint(endpoint_id)
    keep = keep_old_secret_active_for_24_hours
    return _save(
        row,
        {
            "secret": new_secret(),
            "previous_secret": row.secret if keep else None,
            "previous_secret_expires_at": int(time.time()) + PREVIOUS_SECRET_SECONDS if keep else None,
        },
    )


def _save(row: WebhookEndpointRow, changes: dict[str, Any]) -> WebhookEndpointRow:
    if not changes:
        return row
    with session() as s:
        stored = s.scalars(select(WebhookEndpointRow).where(WebhookEndpointRow.id == row.id)).one()
        for field, value in {**changes, "updated_at": int(time.time())}.items():
            setattr(stored, field, value)
    return get_endpoint(row.id)


def delete_endpoint(endpoint_id: str) -> None:
    """Delete an endpoint; deliveries still waiting for it are given up when their turn comes."""
    get_endpoint(endpoint_id)
    with session() as s:
        s.execute(delete(WebhookEndpointRow).where(WebhookEndpointRow.id == endpoint_id))


def signing_secrets(row: WebhookEndpointRow, now: float) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and a rotated-out one still active."""
    active = [row.secret]
    if row.previous_secret and (row.previous_secret_expires_at or 0) > now:
        active.append(row.previous_secret)
    return active


def signature_headers(message_id: str, timestamp: int, body: bytes, secrets_: list[str]) -> dict[str, str]:
    """Standard Webhooks' headers for `body`: one `v1,` signature per secret, space-separated."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    signatures = [
        "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()
        for secret in secrets_
    ]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))
