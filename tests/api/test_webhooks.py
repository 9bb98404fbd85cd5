"""Webhooks through the SDK's `client.webhooks`: endpoints, URL rules, and signed deliveries of job
events that a real receiver verifies with `client.webhooks.unwrap()`, retried until it answers."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_ID, Server, free_port, make_home, running_server
from tests.support import WebhookReceiver, add_broken_model, chat_rows, upload_rows, wait_for_job

JOB_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


@pytest.fixture(scope="module")
def hook_server(
    tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path
) -> Iterator[Server]:
    """A server that may send to 127.0.0.1 (and no other private address), retrying fast."""
    env = {
        "TUNEHOUSE_ALLOWED_OUTBOUND": "127.0.0.1",
        "TUNEHOUSE_NOTIFY_RETRY_BASE_S": "0.2",
        "TUNEHOUSE_NOTIFY_RETRY_MAX_S": "1",
        "TUNEHOUSE_AUTO_EVAL_EXAMPLES": "0",
    }
    home = make_home(tmp_path_factory.mktemp("hooks"), shipped_model_dir)
    with running_server(home, tiny_model_dir, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def hook_client(hook_server: Server) -> OpenAI:
    return hook_server.client()


def deliveries(server: Server, endpoint_id: str) -> list[dict[str, Any]]:
    """tunehouse's own delivery log of an endpoint, newest first."""
    response = httpx.get(f"{server.base_url}/webhook_endpoints/{endpoint_id}/deliveries", params={"limit": 100})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def test_endpoints_are_created_listed_updated_rotated_and_deleted(hook_client: OpenAI) -> None:
    created = hook_client.webhooks.create(
        name="ci", url="http://127.0.0.1:9/hooks", event_types=["fine_tuning.job.succeeded"]
    )
    assert created.object == "webhook_endpoint" and created.id.startswith("we_")
    assert created.signing_secret.startswith("whsec_")
    assert len(base64.b64decode(created.signing_secret.removeprefix("whsec_"))) == 32
    assert created.signing_secret_hint and created.signing_secret_hint.endswith(created.signing_secret[-4:])

    retrieved = hook_client.webhooks.retrieve(created.id)
    assert retrieved.url == "http://127.0.0.1:9/hooks" and retrieved.event_types == ["fine_tuning.job.succeeded"]
    assert "signing_secret" not in retrieved.model_dump()  # shown once, at creation
    assert created.id in [e.id for e in hook_client.webhooks.list()]

    updated = hook_client.webhooks.update(created.id, name="renamed", event_types=JOB_EVENTS)
    assert updated.name == "renamed" and updated.event_types == JOB_EVENTS and updated.url == created.url
    rotated = hook_client.webhooks.rotate_secret(created.id)
    assert rotated.signing_secret.startswith("whsec_") and rotated.signing_secret != created.signing_secret

    assert set(JOB_EVENTS) <= set(hook_client.webhooks.event_types.list().data)
    deleted = hook_client.webhooks.delete(created.id)
    assert deleted.deleted and deleted.object == "webhook_endpoint.deleted"
    with pytest.raises(openai.NotFoundError):
        hook_client.webhooks.retrieve(created.id)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://127.0.0.1/hooks", "must be an http(s):// URL"),
        ("file:///etc/passwd", "must be an http(s):// URL"),
        ("http://10.0.0.1/hooks", "loopback and private addresses need an entry"),
        ("http://192.168.1.1/hooks", "loopback and private addresses need an entry"),
        ("http://169.254.169.254/latest/meta-data", "loopback and private addresses need an entry"),
        ("http://127.0.0.2:8000/hooks", "the address 127.0.0.2 is not in TUNEHOUSE_ALLOWED_OUTBOUND"),
        ("http://[::1]:8000/hooks", "the address ::1 is not in TUNEHOUSE_ALLOWED_OUTBOUND"),
    ],
)
def test_urls_must_be_http_and_private_ones_allowed_by_the_operator(hook_client: OpenAI, url: str, says: str) -> None:
    with pytest.raises(openai.BadRequestError, match=re.escape(says)) as caught:
        hook_client.webhooks.create(name="x", url=url, event_types=["fine_tuning.job.failed"])
    assert caught.value.param == "url"


def test_unknown_event_types_and_missing_fields_are_refused(hook_client: OpenAI, hook_server: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="'batch.completed' is not an event this server sends") as caught:
        hook_client.webhooks.create(
            name="x", url="http://127.0.0.1:9/", event_types=["fine_tuning.job.failed", "batch.completed"]
        )
    assert caught.value.param == "event_types[1]"
    response = httpx.post(f"{hook_server.base_url}/webhook_endpoints", json={"url": "http://127.0.0.1:9/"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"


def test_a_server_without_an_allowlist_refuses_loopback_webhooks(
    tmp_path: Path, shipped_model_dir: Path, tiny_model_dir: Path
) -> None:
    with running_server(make_home(tmp_path / "home", shipped_model_dir), tiny_model_dir) as server:
        with pytest.raises(openai.BadRequestError, match="need an entry") as caught:
            server.client().webhooks.create(name="x", url="http://127.0.0.1:9/", event_types=JOB_EVENTS)
        assert "TUNEHOUSE_ALLOWED_OUTBOUND" in caught.value.message


def test_a_receiver_that_was_down_gets_every_job_event_signed(
    hook_server: Server, hook_client: OpenAI, tmp_path: Path
) -> None:
    receiver = WebhookReceiver(free_port(), answers=(503,))  # not listening yet; then one 503
    endpoint = hook_client.webhooks.create(name="ci", url=receiver.url, event_types=JOB_EVENTS)
    training_file = upload_rows(hook_client, tmp_path, chat_rows(10))

    succeeded = hook_client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=training_file, hyperparameters={"n_epochs": 1}
    )
    broken = add_broken_model(hook_server, tmp_path, "broken-for-hooks")
    failed = hook_client.fine_tuning.jobs.create(model=broken, training_file=training_file)
    cancelled = hook_client.fine_tuning.jobs.create(model=TINY_ID, training_file=training_file)
    hook_client.fine_tuning.jobs.cancel(cancelled.id)
    for job, status in ((succeeded, "succeeded"), (failed, "failed")):
        assert wait_for_job(hook_client, job.id).status == status
    expected = {succeeded.id: JOB_EVENTS[0], failed.id: JOB_EVENTS[1], cancelled.id: JOB_EVENTS[2]}

    deadline = time.time() + 60
    while not (len(found := deliveries(hook_server, endpoint.id)) == 3 and all(len(d["attempts"]) >= 2 for d in found)):
        assert time.time() < deadline, found
        time.sleep(0.2)
    for delivery in found:  # tried while the receiver was down: connection refused, retried
        assert delivery["status"] == "pending"
        assert all(not a["success"] and a["response_status_code"] is None for a in delivery["attempts"])
        assert "could not reach 127.0.0.1" in delivery["attempts"][0]["error"]

    receiver.start()
    try:
        received = receiver.wait_for(3)
        time.sleep(2)  # nothing arrives twice
        assert len(received) == 3
    finally:
        receiver.stop()

    events = {}
    for body, headers in received:
        event = hook_client.webhooks.unwrap(body, headers, secret=endpoint.signing_secret)
        assert event.object == "event" and event.id == headers["webhook-id"] and event.id.startswith("evt_")
        assert abs(event.created_at - time.time()) < 300
        events[event.data.id] = event.type
        with pytest.raises(openai.InvalidWebhookSignatureError):  # the signature covers the body
            hook_client.webhooks.unwrap(body.replace(b"job", b"jab"), headers, secret=endpoint.signing_secret)
    assert events == expected
    assert json.loads(received[0][0]).keys() == {"id", "object", "created_at", "type", "data"}

    for delivery in deliveries(hook_server, endpoint.id):
        attempts = delivery["attempts"]
        assert delivery["status"] == "delivered" and delivery["next_attempt_at"] is None
        assert attempts[-1]["success"] and attempts[-1]["response_status_code"] == 200
        assert [a["attempted_at"] for a in attempts] == sorted(a["attempted_at"] for a in attempts)
    codes = [a["response_status_code"] for d in deliveries(hook_server, endpoint.id) for a in d["attempts"]]
    assert codes.count(503) == 1  # the one 503 was a failed attempt, tried again
    about_job = httpx.get(f"{hook_server.base_url}/fine_tuning/jobs/{succeeded.id}/deliveries").json()["data"]
    assert [(d["channel"], d["endpoint_id"], d["event_type"], d["status"]) for d in about_job] == [
        ("webhook", endpoint.id, "fine_tuning.job.succeeded", "delivered")
    ]
    assert httpx.get(f"{hook_server.base_url}/fine_tuning/jobs/ftjob-nope/deliveries").status_code == 404
    messages = [e.message for e in hook_client.fine_tuning.jobs.list_events(succeeded.id, limit=100)]
    assert f"Webhook event fine_tuning.job.succeeded delivered to webhook endpoint {endpoint.id}" in messages
    hook_client.webhooks.delete(endpoint.id)


def test_a_rotated_secret_kept_active_signs_beside_the_new_one(hook_client: OpenAI, tmp_path: Path) -> None:
    receiver = WebhookReceiver(free_port()).start()
    try:
        endpoint = hook_client.webhooks.create(name="rotating", url=receiver.url, event_types=[JOB_EVENTS[2]])
        rotated = hook_client.webhooks.rotate_secret(endpoint.id, keep_old_secret_active_for_24_hours=True)
        job = hook_client.fine_tuning.jobs.create(
            model=TINY_ID, training_file=upload_rows(hook_client, tmp_path, chat_rows(10))
        )
        hook_client.fine_tuning.jobs.cancel(job.id)
        [(body, headers)] = receiver.wait_for(1)
    finally:
        receiver.stop()
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (endpoint.signing_secret, rotated.signing_secret):
        assert hook_client.webhooks.unwrap(body, headers, secret=secret).data.id == job.id
    hook_client.webhooks.delete(endpoint.id)


def test_the_cli_adds_lists_shows_deliveries_and_removes_endpoints(hook_server: Server) -> None:
    def cli(*args: str) -> Any:
        return hook_server.cli("webhooks", *args, "--base-url", hook_server.base_url)

    added = cli("add", "http://127.0.0.1:9/hooks", "--name", "from-cli", "--json")
    assert added.returncode == 0, added.stderr
    endpoint = json.loads(added.stdout)
    assert endpoint["signing_secret"].startswith("whsec_") and endpoint["event_types"] == JOB_EVENTS
    listed = cli("list", "--json")
    assert endpoint["id"] in [e["id"] for e in json.loads(listed.stdout)]
    assert endpoint["signing_secret"] not in listed.stdout  # only its hint
    assert json.loads(cli("deliveries", endpoint["id"], "--json").stdout) == []
    assert cli("rm", endpoint["id"]).stdout.strip() == f"Removed webhook endpoint {endpoint['id']}"

    again = cli("rm", endpoint["id"])
    assert again.returncode == 1 and f"No such webhook endpoint: {endpoint['id']}" in again.stderr
    refused = cli("add", "http://10.1.2.3/hooks")
    assert refused.returncode == 1 and "need an entry" in refused.stderr and "Traceback" not in refused.stderr


def test_an_eval_run_that_completes_is_told_to_its_endpoints(hook_client: OpenAI) -> None:
    receiver = WebhookReceiver(free_port()).start()
    try:
        endpoint = hook_client.webhooks.create(
            name="evals", url=receiver.url, event_types=["eval.run.succeeded", "eval.run.failed"]
        )
        evaluation = hook_client.evals.create(
            name="capitals",
            data_source_config={
                "type": "custom",
                "item_schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
                "include_sample_schema": True,
            },
            testing_criteria=[
                {
                    "type": "string_check",
                    "name": "Exact",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}",
                    "operation": "eq",
                }
            ],
        )
        content = [{"item": {"answer": "Paris"}, "sample": {"output_text": "Paris", "model": "someone"}}]
        run = hook_client.evals.runs.create(
            evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}}
        )
        [(body, headers)] = receiver.wait_for(1)
    finally:
        receiver.stop()
    event = hook_client.webhooks.unwrap(body, headers, secret=endpoint.signing_secret)
    assert (event.type, event.data.id) == ("eval.run.succeeded", run.id)
    assert hook_client.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "completed"
    hook_client.webhooks.delete(endpoint.id)
