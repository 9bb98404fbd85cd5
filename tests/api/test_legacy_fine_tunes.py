"""The retired `/v1/fine-tunes` API, called the way the 0.x SDK and `openai api fine_tunes.*` CLI of
seeds 000 and 003 call it (raw HTTP: the 0.x SDK cannot be installed beside the current one)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.conftest import TINY_ID, Server
from tests.support import upload_rows

LEGACY_ROWS = [
    {"prompt": f"Item {i} colour\n\n###\n\n", "completion": f" {['red', 'blue'][i % 2]}###"} for i in range(10)
]


@pytest.fixture(scope="module")
def http(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer sk-local"}, timeout=300)


def test_create_follow_results_use_and_delete(http: httpx.Client, client: OpenAI, tmp_path: Path) -> None:
    training_file = upload_rows(client, tmp_path, LEGACY_ROWS, "training_data.jsonl")
    created = http.post("/fine-tunes", json={"training_file": training_file, "model": TINY_ID, "n_epochs": 1})
    assert created.status_code == 200, created.text
    fine_tune = created.json()
    assert fine_tune["object"] == "fine-tune"
    assert fine_tune["status"] == "pending"
    assert fine_tune["training_files"][0]["id"] == training_file
    assert fine_tune["hyperparams"]["n_epochs"] == 1

    # `openai api fine_tunes.follow -i ID` reads this stream until [DONE], when the job has ended.
    with http.stream("GET", f"/fine-tunes/{fine_tune['id']}/events", params={"stream": "true"}) as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(e["object"] == "fine-tune-event" for e in events)
    assert events[-1]["message"] == "The job has successfully completed"

    done = http.get(f"/fine-tunes/{fine_tune['id']}").json()
    assert done["status"] == "succeeded"
    assert done["result_files"][0]["purpose"] == "fine-tune-results"
    assert [e["message"] for e in done["events"]] == [e["message"] for e in events]
    assert fine_tune["id"] in [f["id"] for f in http.get("/fine-tunes").json()["data"]]

    # Seed 003 queries the model with its separator and stop sequence.
    reply = client.completions.create(
        model=done["fine_tuned_model"], prompt="Item 4 colour\n\n###\n\n", max_tokens=5, stop="###"
    )
    assert "###" not in reply.choices[0].text

    deleted = http.delete(f"/fine-tunes/{fine_tune['id']}").json()
    assert deleted == {"id": done["fine_tuned_model"], "object": "model", "deleted": True}


def test_default_model_is_curie_as_openai_had_it_and_cancel_works(
    http: httpx.Client, client: OpenAI, tmp_path: Path
) -> None:
    training_file = upload_rows(client, tmp_path, LEGACY_ROWS, "seed000.jsonl")
    fine_tune = http.post(
        "/fine-tunes", json={"training_file": training_file}
    ).json()  # FineTune.create(training_file=…)
    assert fine_tune["model"] == "curie"  # an alias of the shipped model (models/aliases.py)
    cancelled = http.post(f"/fine-tunes/{fine_tune['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert http.post(f"/fine-tunes/{fine_tune['id']}/cancel").status_code == 409


def test_unknown_fine_tune_is_404(http: httpx.Client) -> None:
    response = http.get("/fine-tunes/ft-nope")
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "fine_tuning_job_id"
