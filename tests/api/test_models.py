"""The model catalog through the API and the CLI, and deleting a model through either route."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import SHIPPED_ID, TINY_ID, Server
from tests.support import chat_rows, upload_rows, wait_for_job


def test_list_has_the_shipped_and_registered_base_models(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert models[SHIPPED_ID].owned_by == "HuggingFaceTB"
    assert TINY_ID in models


def test_ids_with_a_slash_work_on_every_model_route(client: OpenAI) -> None:
    assert client.models.retrieve(SHIPPED_ID).id == SHIPPED_ID
    with pytest.raises(openai.BadRequestError) as err:
        client.models.delete(SHIPPED_ID)
    assert "base model" in err.value.message


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("org/does-not-exist")
    with pytest.raises(openai.NotFoundError):
        client.models.delete("ft:nothing:here::x")


def test_models_add_rejects_bad_folders_and_duplicates(
    server: Server, client: OpenAI, tmp_path: Path, tiny_model_dir: Path
) -> None:
    empty = server.cli("models", "add", "empty", str(tmp_path))
    assert empty.returncode == 1
    assert "config.json" in empty.stderr and "Traceback" not in empty.stderr
    duplicate = server.cli("models", "add", TINY_ID, str(tiny_model_dir))
    assert duplicate.returncode == 1 and "already registered" in duplicate.stderr
    added = server.cli("models", "add", "team/tiny-copy", str(tiny_model_dir))
    assert added.returncode == 0, added.stderr
    assert "team/tiny-copy" in server.cli("models", "list").stdout
    assert client.models.retrieve("team/tiny-copy").owned_by == "user"
    reply = client.chat.completions.create(
        model="team/tiny-copy", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.model == "team/tiny-copy"


def test_both_delete_routes_take_the_model_out_of_service(server: Server, client: OpenAI, tmp_path: Path) -> None:
    http = httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer sk-local"}, timeout=120)
    training_file = upload_rows(client, tmp_path, chat_rows(10))
    fine_tune = http.post("/fine-tunes", json={"training_file": training_file, "model": TINY_ID, "n_epochs": 1}).json()
    done = wait_for_job(client, fine_tune["id"])
    assert done.status == "succeeded", done.error
    [checkpoint] = [c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(done.id)]
    hi = [{"role": "user", "content": "hi"}]
    for model in (done.fine_tuned_model, checkpoint):  # both adapters in memory now
        assert client.chat.completions.create(model=model, messages=hi, max_tokens=2).model == model

    assert client.models.delete(checkpoint).deleted
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=checkpoint, messages=hi, max_tokens=2)
    assert client.chat.completions.create(model=done.fine_tuned_model, messages=hi, max_tokens=2)

    deleted = http.delete(f"/fine-tunes/{done.id}")
    assert deleted.json() == {"id": done.fine_tuned_model, "object": "model", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=done.fine_tuned_model, messages=hi, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=done.fine_tuned_model, prompt="hi", max_tokens=2)
    assert done.fine_tuned_model not in [m.id for m in client.models.list()]
    assert client.chat.completions.create(model=TINY_ID, messages=hi, max_tokens=2).model == TINY_ID
