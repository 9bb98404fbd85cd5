"""Emails about jobs: who gets one when a job ends, what it says, and sending it over SMTP.

A job's creator opts in with `metadata={"notify_email": "me@example.com"}`; the operator may also
name a recipient for every job (TUNEHOUSE_NOTIFY_EMAIL). The message is written when the job ends,
in the transaction that ends it, and queued in the outbox (`store/outbox.py`), whose sender
(`jobs/delivery.py`) sends it with retries, so a dead SMTP server never holds up or fails a job.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunehouse.config import settings
from tunehouse.errors import InvalidRequest
from tunehouse.store.outbox import Email
from tunehouse.store.schema import EventRow, JobRow

METADATA_KEY = "notify_email"
SMTP_TIMEOUT_S = 30
DEFAULT_PORTS = {"ssl": 465, "starttls": 587, "none": 25}


def _is_address(value: str) -> bool:
    name, address = parseaddr(value)
    local, _, domain = address.partition("@")
    return bool(local) and "." in domain and not name and address == value.strip()


def check_notify_email(metadata: dict[str, Any] | None) -> None:
    """At job creation: `metadata.notify_email` must be one address, and this server must send email."""
    value = (metadata or {}).get(METADATA_KEY)
    if value is None:
        return
    param = f"metadata.{METADATA_KEY}"
    if not isinstance(value, str) or not _is_address(value):
        raise InvalidRequest(f"{param} must be one email address, such as me@example.com.", param=param)
    if settings().smtp_host is None:
        raise InvalidRequest(
            f"{param}: this server sends no email; its operator has not set TUNEHOUSE_SMTP_HOST.", param=param
        )


def job_emails(s: Session, job: JobRow) -> tuple[Email, ...]:
    """In the transaction that ended `job`: the emails to send about it (none without an SMTP server)."""
    config = settings()
    if config.smtp_host is None:
        return ()
    recipients = [(job.job_metadata or {}).get(METADATA_KEY), config.notify_email]
    wanted = list(dict.fromkeys(r for r in recipients if r))
    if not wanted:
        return ()
    subject, text = _job_message(s, job, config.public_url)
    return tuple(Email(recipient, subject, text) for recipient in wanted)


def _job_message(s: Session, job: JobRow, public_url: str) -> tuple[str, str]:
    """The subject and text of the email: the job's outcome, model, tokens, final losses and a link."""
    last = _last_metrics(s, job.id)
    lines = [
        f"Status:            {job.status}",
        f"Base model:        {job.model}",
        f"Fine-tuned model:  {job.fine_tuned_model or '–'}",
        f"Trained tokens:    {job.trained_tokens:,}" if job.trained_tokens is not None else "Trained tokens:    –",
        f"Final train loss:  {_loss(last.get('train_loss'))}",
        f"Final valid loss:  {_loss(last.get('valid_loss'))}",
    ]
    if last.get("full_valid_loss") is not None:
        lines.append(f"Full valid loss:   {_loss(last['full_valid_loss'])}")
    if last.get("step") is not None:
        lines.append(f"Steps:             {last['step']}/{last.get('total_steps', '?')}")
    if job.error:
        lines.append(f"Error:             {job.error.get('message')}")
    link = f"{public_url}/#/jobs/{job.id}"
    text = f"Your fine-tuning job {job.id} has {job.status}.\n\n" + "\n".join(lines) + f"\n\nDashboard: {link}\n"
    return f"Fine-tuning job {job.id} {job.status}", text


def _last_metrics(s: Session, job_id: str) -> dict[str, Any]:
    """The newest metrics with each loss: the last step's train loss, the last measured valid loss."""
    query = select(EventRow.data).where(EventRow.job_id == job_id, EventRow.type == "metrics").order_by(EventRow.seq)
    merged: dict[str, Any] = {}
    for data in s.scalars(query).all():
        merged.update({k: v for k, v in (data or {}).items() if v is not None})
    return merged


def _loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "–"


def send_email(recipient: str, subject: str, text: str) -> None:
    """Send one email through the configured SMTP server. Raises OSError (`smtplib.SMTPException`
    included) when it cannot, for the outbox to retry."""
    config = settings()
    if config.smtp_host is None:
        raise smtplib.SMTPException("TUNEHOUSE_SMTP_HOST is not set")
    if config.smtp_tls not in DEFAULT_PORTS:
        raise smtplib.SMTPException(f"TUNEHOUSE_SMTP_TLS is {config.smtp_tls!r}; use none, starttls or ssl")
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = config.smtp_from, recipient, subject
    message.set_content(text)
    port = config.smtp_port or DEFAULT_PORTS[config.smtp_tls]
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if config.smtp_tls == "ssl":
        smtp = smtplib.SMTP_SSL(config.smtp_host, port, timeout=SMTP_TIMEOUT_S, context=context)
    else:
        smtp = smtplib.SMTP(config.smtp_host, port, timeout=SMTP_TIMEOUT_S)
    with smtp:
        if config.smtp_tls == "starttls":
            smtp.starttls(context=context)
        if config.smtp_user:
            smtp.login(config.smtp_user, config.smtp_password or "")
        smtp.send_message(message)
