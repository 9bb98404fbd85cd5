"""Completion emails, received by a real SMTP server (aiosmtpd) that logs the sender in: what they
say, who gets them, and that an SMTP server that is down holds up no job and loses no email."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import openai
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from openai import OpenAI

from tests.conftest import TINY_ID, Server, free_port, make_home, running_server
from tests.support import add_broken_model, chat_rows, upload_rows, wait_for_job

USER, PASSWORD = "tunehouse", "s3cret"
PUBLIC_URL = "https://tunehouse.example.com"


class Inbox:
    """aiosmtpd's handler: keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.messages.append(email.message_from_bytes(content, policy=email.policy.default))  # type: ignore[arg-type]  # default policy gives EmailMessage
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 60) -> list[EmailMessage]:
        deadline = time.time() + timeout
        while len(self.messages) < count:
            assert time.time() < deadline, f"{len(self.messages)} of {count} emails arrived"
            time.sleep(0.1)
        return self.messages


def login(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok)


@pytest.fixture(scope="module")
def smtp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def mail_server(
    tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path, smtp_port: int
) -> Iterator[Server]:
    env = {
        "TUNEHOUSE_SMTP_HOST": "127.0.0.1",
        "TUNEHOUSE_SMTP_PORT": str(smtp_port),
        "TUNEHOUSE_SMTP_TLS": "none",
        "TUNEHOUSE_SMTP_USER": USER,
        "TUNEHOUSE_SMTP_PASSWORD": PASSWORD,
        "TUNEHOUSE_SMTP_FROM": "tunehouse <jobs@tunehouse.example.com>",
        "TUNEHOUSE_NOTIFY_EMAIL": "ops@example.com",
        "TUNEHOUSE_PUBLIC_URL": PUBLIC_URL,
        "TUNEHOUSE_NOTIFY_RETRY_BASE_S": "0.2",
        "TUNEHOUSE_NOTIFY_RETRY_MAX_S": "1",
        "TUNEHOUSE_AUTO_EVAL_EXAMPLES": "0",
    }
    home = make_home(tmp_path_factory.mktemp("mail"), shipped_model_dir)
    with running_server(home, tiny_model_dir, env=env) as srv:
        yield srv


def body_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def test_the_creator_and_the_operator_get_the_completion_email_once_smtp_is_up(
    mail_server: Server, smtp_port: int, tmp_path: Path
) -> None:
    client = mail_server.client()
    job = client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=upload_rows(client, tmp_path, chat_rows(10)),
        validation_file=upload_rows(client, tmp_path, chat_rows(4, topic="shade"), "valid.jsonl"),
        hyperparameters={"n_epochs": 1},
        metadata={"notify_email": "me@example.com"},
    )
    done = wait_for_job(client, job.id)  # the SMTP server is down: the job is not held up by it
    assert done.status == "succeeded", done.error
    time.sleep(1)  # a few tries fail meanwhile

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port, authenticator=login, auth_require_tls=False)
    controller.start()
    try:
        messages = inbox.wait_for(2)
        time.sleep(1.5)
        assert len(messages) == 2  # one each, not one per try
    finally:
        controller.stop()

    assert sorted(m["To"] for m in messages) == ["me@example.com", "ops@example.com"]
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    last = metrics[0]  # newest first
    assert last is not None
    for message in messages:
        assert message["Subject"] == f"Fine-tuning job {job.id} succeeded"
        assert message["From"] == "tunehouse <jobs@tunehouse.example.com>"
        text = body_of(message)
        assert "Status:            succeeded" in text
        assert f"Fine-tuned model:  {done.fine_tuned_model}" in text
        assert f"Trained tokens:    {done.trained_tokens:,}" in text
        assert f"Final train loss:  {last['train_loss']:.4f}" in text
        assert f"Final valid loss:  {last['valid_loss']:.4f}" in text
        assert f"Dashboard: {PUBLIC_URL}/#/jobs/{job.id}" in text

    messages_of_job = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Email delivered to me@example.com" in messages_of_job
    assert "Email delivered to ops@example.com" in messages_of_job


def test_a_failed_job_email_says_why(mail_server: Server, smtp_port: int, tmp_path: Path) -> None:
    client = mail_server.client()
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port, authenticator=login, auth_require_tls=False)
    controller.start()
    try:
        broken = add_broken_model(mail_server, tmp_path, "broken-for-mail")
        job = client.fine_tuning.jobs.create(model=broken, training_file=upload_rows(client, tmp_path, chat_rows(10)))
        done = wait_for_job(client, job.id)
        assert done.status == "failed"
        [message] = [m for m in inbox.wait_for(1) if m["To"] == "ops@example.com"]  # only the operator asked
    finally:
        controller.stop()
    assert message["Subject"] == f"Fine-tuning job {job.id} failed"
    text = body_of(message)
    assert "Status:            failed" in text and "Fine-tuned model:  –" in text
    assert done.error is not None and f"Error:             {done.error.message.splitlines()[0]}" in text


def test_notify_email_must_be_an_address(mail_server: Server, tmp_path: Path) -> None:
    client = mail_server.client()
    train = upload_rows(client, tmp_path, chat_rows(10))
    for bad in ("not-an-address", "a@b", "Me <me@example.com>", "me@example.com, you@example.com"):
        with pytest.raises(openai.BadRequestError, match="must be one email address") as caught:
            client.fine_tuning.jobs.create(model=TINY_ID, training_file=train, metadata={"notify_email": bad})
        assert caught.value.param == "metadata.notify_email"


def test_a_server_without_smtp_refuses_notify_email(client: OpenAI, tmp_path: Path) -> None:
    train = upload_rows(client, tmp_path, chat_rows(10))
    with pytest.raises(openai.BadRequestError, match="this server sends no email"):
        client.fine_tuning.jobs.create(model=TINY_ID, training_file=train, metadata={"notify_email": "me@example.com"})
