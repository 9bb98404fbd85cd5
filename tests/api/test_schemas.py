"""Every JSON object the server returns validates against OpenAI's published schema for it.

The schemas are OpenAI's own (`tests/spec/openai-openapi-subset.json`, MIT, vendored from
openai/openai-openapi). Responses are fetched raw, so nothing the SDK tolerates can hide a mismatch.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openai import OpenAI

from tests.conftest import SHIPPED_ID, TINY_ID, Server
from tests.support import chat_rows, upload_rows, wait_for_job

SPEC = Path(__file__).resolve().parents[1] / "spec" / "openai-openapi-subset.json"


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 → JSON Schema: `nullable: true` becomes `anyOf [..., null]`, and boolean
    `exclusiveMinimum/Maximum` (draft 4) become the numeric bounds of current JSON Schema."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _openapi_to_jsonschema(v) for k, v in node.items()}
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(exclusive) is True:
            node[exclusive] = node.pop(bound)
        elif node.get(exclusive) is False:
            node.pop(exclusive)
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


@cache
def _spec() -> dict[str, Any]:
    return _openapi_to_jsonschema(json.loads(SPEC.read_text()))


def assert_schema(instance: Any, name: str) -> None:
    spec = _spec()
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    jsonschema.validate(instance, schema)


@pytest.fixture(scope="module")
def http(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer sk-local"}, timeout=120)


@pytest.fixture(scope="module")
def finished_job(client: OpenAI, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("schema")
    train = upload_rows(client, tmp, chat_rows(10))
    valid = upload_rows(client, tmp, chat_rows(3, topic="hue"), "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=train, validation_file=valid, hyperparameters={"n_epochs": 1}, metadata={"k": "v"}
    )
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    return done


def test_file_objects(http: httpx.Client, finished_job: Any) -> None:
    listing = http.get("/files").json()
    # OpenAI takes purpose "evals" on upload, but its spec's file object leaves it out of the enum:
    # other tests' eval files are checked as files of another purpose.
    files = [{**f, "purpose": "user_data"} if f["purpose"] == "evals" else f for f in listing["data"]]
    assert_schema({**listing, "data": files}, "ListFilesResponse")
    assert_schema(http.get(f"/files/{finished_job.training_file}").json(), "OpenAIFile")
    assert_schema(http.get(f"/files/{finished_job.result_files[0]}").json(), "OpenAIFile")
    assert_schema(http.get("/files", params={"purpose": "nothing-here"}).json(), "ListFilesResponse")


def test_job_objects(http: httpx.Client, finished_job: Any) -> None:
    assert_schema(http.get(f"/fine_tuning/jobs/{finished_job.id}").json(), "FineTuningJob")
    assert_schema(http.get("/fine_tuning/jobs").json(), "ListPaginatedFineTuningJobsResponse")
    events = http.get(f"/fine_tuning/jobs/{finished_job.id}/events", params={"limit": 100}).json()
    assert_schema(events, "ListFineTuningJobEventsResponse")
    assert any(e["type"] == "metrics" for e in events["data"])
    checkpoints = http.get(f"/fine_tuning/jobs/{finished_job.id}/checkpoints").json()
    assert_schema(checkpoints, "ListFineTuningJobCheckpointsResponse")
    assert checkpoints["data"]


def test_failed_and_cancelled_jobs(http: httpx.Client, client: OpenAI, tmp_path: Path) -> None:
    failed = client.fine_tuning.jobs.create(model=TINY_ID, training_file=upload_rows(client, tmp_path, chat_rows(2)))
    wait_for_job(client, failed.id)
    body = http.get(f"/fine_tuning/jobs/{failed.id}").json()
    assert body["status"] == "failed"
    assert_schema(body, "FineTuningJob")


def test_model_objects(http: httpx.Client, finished_job: Any) -> None:
    assert_schema(http.get("/models").json(), "ListModelsResponse")
    assert_schema(http.get(f"/models/{SHIPPED_ID}").json(), "Model")
    assert_schema(http.get(f"/models/{finished_job.fine_tuned_model}").json(), "Model")


def test_completion_objects(http: httpx.Client) -> None:
    chat = http.post(
        "/chat/completions", json={"model": TINY_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    ).json()
    assert_schema(chat, "CreateChatCompletionResponse")
    legacy = http.post("/completions", json={"model": TINY_ID, "prompt": "hi", "max_tokens": 3}).json()
    assert_schema(legacy, "CreateCompletionResponse")
    with http.stream(
        "POST",
        "/chat/completions",
        json={
            "model": TINY_ID,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert_schema(json.loads(line.removeprefix("data: ")), "CreateChatCompletionStreamResponse")


def test_error_envelopes(http: httpx.Client) -> None:
    responses = [
        http.get("/files/file-nope"),
        http.get("/models/nope"),
        http.post("/chat/completions", json={"model": TINY_ID}),
        http.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
        http.post("/fine_tuning/jobs", json={"model": TINY_ID, "training_file": "file-nope"}),
        http.get("/no/such/route"),
        http.delete(f"/models/{SHIPPED_ID}"),
    ]
    assert [r.status_code for r in responses] == [404, 404, 400, 400, 404, 404, 400]
    for response in responses:
        assert_schema(response.json(), "ErrorResponse")
