"""The outbox's sender: a thread beside the worker that delivers webhook events and emails.

It claims due rows of the outbox (`store/outbox.py`), tries each once — an HTTP POST signed per
Standard Webhooks to the address the URL check approved, or an email over SMTP — and records the
attempt. A failure is tried again after a wait that doubles each time (TUNEHOUSE_NOTIFY_RETRY_BASE_S,
at most TUNEHOUSE_NOTIFY_RETRY_MAX_S) until the event is TUNEHOUSE_NOTIFY_GIVE_UP_S old. It runs on
its own thread, so a slow or dead receiver never holds up a job; each attempt has a timeout.
"""

from __future__ import annotations

import json
import logging
import smtplib
import threading
import time

import httpx

from tunehouse.config import settings
from tunehouse.errors import TunehouseError
from tunehouse.jobs.email import send_email
from tunehouse.jobs.records import add_event
from tunehouse.jobs.webhooks import check_url, find_endpoint, signature_headers, signing_secrets
from tunehouse.store import outbox
from tunehouse.store.schema import OutboxRow

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
BATCH = 20
HOLD_SECONDS = 300
"""How long a claimed row stays this sender's: longer than a batch of attempts with their timeouts."""
HTTP_TIMEOUT_S = 10


class DeliveryFailed(Exception):
    """An attempt that reached no one, or that the receiver refused; `final` ones are not retried."""

    def __init__(self, message: str, status_code: int | None = None, final: bool = False) -> None:
        super().__init__(message)
        self.message, self.status_code, self.final = message, status_code, final


def retry_delay(failures: int) -> float:
    """Seconds to wait after the `failures`-th failed attempt: the base, doubled each time, capped."""
    config = settings()
    return min(config.notify_retry_max_s, config.notify_retry_base_s * 2 ** (failures - 1))


def deliver_due() -> int:
    """Try every delivery that is due now, once; returns how many were tried."""
    rows = outbox.claim_due(time.time(), BATCH, HOLD_SECONDS)
    for row in rows:
        deliver(row)
    return len(rows)


def deliver(row: OutboxRow) -> None:
    """One attempt at `row`, recorded with its outcome and, if it failed, when to try again."""
    status_code: int | None = None
    error: str | None = None
    final = False
    try:
        if row.channel == "webhook":
            status_code = post_webhook(row)
        else:
            _send_email(row)
    except DeliveryFailed as exc:
        status_code, error, final = exc.status_code, exc.message, exc.final
    except Exception as exc:  # a bug here must fail the attempt, never the sender
        log.exception("delivery %s crashed", row.id)
        error = f"{type(exc).__name__}: {exc}"
    retry_at = None
    if error is not None and not final:
        retry_at = time.time() + retry_delay(row.attempts + 1)
        if retry_at - row.created_at > settings().notify_give_up_s:
            retry_at = None
    outbox.record_attempt(
        row.id, success=error is None, response_status_code=status_code, error=error, retry_at=retry_at
    )
    if error is None or retry_at is None:
        _tell_the_job(row, error)


def post_webhook(row: OutboxRow) -> int:
    """POST the event to its endpoint, signed; returns the 2xx status, or raises DeliveryFailed."""
    endpoint = find_endpoint(row.endpoint_id or "")
    if endpoint is None:
        raise DeliveryFailed("the webhook endpoint was deleted", final=True)
    try:
        addresses = check_url(endpoint.url)  # again now: the name may resolve elsewhere than at creation
    except TunehouseError as exc:
        raise DeliveryFailed(f"refused: {exc.message}") from exc
    body = json.dumps(row.payload, separators=(",", ":")).encode()
    now = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "tunehouse-webhooks",
        **signature_headers(row.event_id, now, body, signing_secrets(endpoint, now)),
    }
    url = httpx.URL(endpoint.url)
    headers["host"] = url.netloc.decode("ascii")
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    failure = ""
    with httpx.Client(timeout=HTTP_TIMEOUT_S, follow_redirects=False, trust_env=False) as client:
        for address in addresses:  # the checked addresses only, never a new lookup (DNS rebinding)
            try:
                pinned = url.copy_with(host=str(address))
                with client.stream("POST", pinned, content=body, headers=headers, extensions=extensions) as response:
                    code = response.status_code  # the body is not read: a receiver cannot flood the sender
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if not 200 <= code < 300:
                raise DeliveryFailed(f"the endpoint answered HTTP {code}", status_code=code)
            return code
    raise DeliveryFailed(f"could not reach {url.host}: {failure}")


def _send_email(row: OutboxRow) -> None:
    try:
        send_email(row.recipient or "", row.payload["subject"], row.payload["text"])
    except smtplib.SMTPResponseException as exc:
        reply = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise DeliveryFailed(f"the SMTP server answered {exc.smtp_code} {reply}", status_code=exc.smtp_code) from exc
    except (OSError, smtplib.SMTPException) as exc:  # refused, timed out, TLS, login…
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc


def _tell_the_job(row: OutboxRow, error: str | None) -> None:
    """A job's events say how its notifications ended: sent, or given up and why."""
    if not row.event_type.startswith("fine_tuning.job."):
        return
    target = row.recipient if row.channel == "email" else f"webhook endpoint {row.endpoint_id}"
    what = "Email" if row.channel == "email" else f"Webhook event {row.event_type}"
    if error is None:
        add_event(row.subject_id, f"{what} delivered to {target}")
    else:
        add_event(row.subject_id, f"{what} to {target} not delivered: {error}", level="warn")


def run_sender(stop: threading.Event | None = None) -> None:
    """Deliver until `stop` is set, looking for due rows every POLL_SECONDS when idle."""
    while stop is None or not stop.is_set():
        try:
            busy = deliver_due() > 0
        except Exception:  # the store was busy or a bug: keep sending what can be sent
            log.exception("outbox sender error")
            busy = False
        if not busy:
            if stop is None:
                time.sleep(POLL_SECONDS)
            elif stop.wait(POLL_SECONDS):
                return


def start_sender_thread(stop: threading.Event | None = None) -> threading.Thread:
    thread = threading.Thread(target=run_sender, args=(stop,), name="tunehouse-outbox", daemon=True)
    thread.start()
    return thread
