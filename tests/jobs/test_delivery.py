"""The outbox sender in-process, against a real store and a real receiver: backoff, the URL check
made again at each attempt, giving up, and a deleted endpoint's deliveries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.conftest import free_port
from tests.support import WebhookReceiver
from tunehouse.jobs import webhooks
from tunehouse.jobs.delivery import deliver_due, retry_delay
from tunehouse.store import outbox
from tunehouse.store.db import session
from tunehouse.store.schema import OutboxRow


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEHOUSE_ALLOWED_OUTBOUND", "127.0.0.1")
    monkeypatch.setenv("TUNEHOUSE_NOTIFY_RETRY_BASE_S", "0.05")
    monkeypatch.setenv("TUNEHOUSE_NOTIFY_RETRY_MAX_S", "0.1")
    return tmp_path


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hooks = WebhookReceiver(free_port()).start()
    yield hooks
    hooks.stop()


def run_ended(run_id: str) -> OutboxRow:
    """What the Evals API does when a run completes: its event, queued in the run's transaction."""
    with session() as s:
        outbox.queue_eval_run_ended(s, run_id, "completed")
    [row] = outbox.deliveries_about(run_id)
    return row


def deliver_until(run_id: str, done: set[str], timeout: float = 10) -> OutboxRow:
    deadline = time.time() + timeout
    while (row := outbox.deliveries_about(run_id)[0]).status not in done:
        assert time.time() < deadline, row.status
        deliver_due()
        time.sleep(0.05)
    return row


def test_waits_double_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEHOUSE_NOTIFY_RETRY_BASE_S", "1")
    monkeypatch.setenv("TUNEHOUSE_NOTIFY_RETRY_MAX_S", "600")
    assert [retry_delay(n) for n in range(1, 13)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]


def test_the_url_is_checked_again_at_each_attempt_and_the_checked_address_is_used(
    home: Path, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://localhost:{receiver.port}/hooks"  # a name: resolved at each attempt, then pinned
    endpoint = webhooks.create_endpoint("local", url, ["eval.run.succeeded"])
    monkeypatch.setenv("TUNEHOUSE_ALLOWED_OUTBOUND", "10.0.0.0/8")  # the operator no longer allows loopback
    row = run_ended("evalrun_1")
    assert row.payload["type"] == "eval.run.succeeded" and row.payload["data"] == {"id": "evalrun_1"}
    assert deliver_due() == 1
    [attempt] = outbox.attempts_of([row.id])[row.id]
    assert not attempt.success and attempt.error is not None
    assert "refused" in attempt.error and "non-public address 127.0.0.1" in attempt.error
    assert receiver.received == []

    monkeypatch.setenv("TUNEHOUSE_ALLOWED_OUTBOUND", "127.0.0.1")
    delivered = deliver_until("evalrun_1", {"delivered"})
    assert delivered.attempts == 2
    [(body, headers)] = receiver.received
    assert headers["host"] == f"localhost:{receiver.port}"  # sent to the address checked, named as given
    event = OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=endpoint.secret)
    assert event.type == "eval.run.succeeded" and event.data.id == "evalrun_1"


def test_a_delivery_nobody_takes_is_given_up_when_too_old(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEHOUSE_NOTIFY_GIVE_UP_S", "2")
    webhooks.create_endpoint("down", f"http://127.0.0.1:{free_port()}/hooks", ["eval.run.succeeded"])
    row = run_ended("evalrun_2")
    failed = deliver_until("evalrun_2", {"failed"})
    attempts = outbox.attempts_of([row.id])[row.id]
    assert failed.next_attempt_at is None and failed.attempts == len(attempts) >= 2
    assert all("could not reach 127.0.0.1" in (a.error or "") for a in attempts)


def test_deliveries_to_a_deleted_endpoint_are_dropped(home: Path, receiver: WebhookReceiver) -> None:
    endpoint = webhooks.create_endpoint("gone", receiver.url, ["eval.run.succeeded"])
    row = run_ended("evalrun_3")
    webhooks.delete_endpoint(endpoint.id)
    assert deliver_until("evalrun_3", {"failed"}).attempts == 1
    assert outbox.attempts_of([row.id])[row.id][0].error == "the webhook endpoint was deleted"
    assert receiver.received == []


def test_endpoints_get_only_the_events_they_asked_for(home: Path, receiver: WebhookReceiver) -> None:
    webhooks.create_endpoint("jobs only", receiver.url, ["fine_tuning.job.failed"])
    with session() as s:
        outbox.queue_eval_run_ended(s, "evalrun_4", "failed")
        outbox.queue_eval_run_ended(s, "evalrun_4", "in_progress")  # not an end: nothing
    assert outbox.deliveries_about("evalrun_4") == []
