"""The files API through the openai SDK, as seed 002 uses it."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.conftest import MAX_FILE_BYTES, Server
from tests.support import chat_rows, write_jsonl


def test_upload_retrieve_list_content_delete(client: OpenAI, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "training_data.jsonl", chat_rows(12))
    with open(path, "rb") as f:
        created = client.files.create(file=f, purpose="fine-tune")
    assert created.id.startswith("file-")
    assert created.object == "file"
    assert created.filename == "training_data.jsonl"
    assert created.bytes == path.stat().st_size
    assert created.purpose == "fine-tune"
    assert created.status == "processed"

    assert client.files.retrieve(created.id).model_dump() == created.model_dump()
    assert created.id in [f.id for f in client.files.list()]
    assert client.files.content(created.id).read() == path.read_bytes()

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError) as err:
        client.files.retrieve(created.id)
    assert err.value.code == "not_found"


def test_list_is_newest_first_and_pages_with_after(client: OpenAI, tmp_path: Path) -> None:
    ids = []
    for i in range(3):
        path = write_jsonl(tmp_path / f"page{i}.jsonl", chat_rows(1))
        with open(path, "rb") as f:
            ids.append(client.files.create(file=f, purpose="batch").id)
    page = client.files.list(limit=2, purpose="batch")
    assert [f.id for f in page.data] == [ids[2], ids[1]]
    assert page.has_more
    rest = client.files.list(limit=2, purpose="batch", after=ids[1])
    assert [f.id for f in rest.data] == [ids[0]]
    assert [f.id for f in client.files.list(purpose="batch")] == ids[::-1]
    assert [f.id for f in client.files.list(purpose="batch", order="asc")] == ids


def test_unknown_purpose_is_a_400_naming_the_field(client: OpenAI, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", chat_rows(1))
    with open(path, "rb") as f, pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=f, purpose="bogus")  # type: ignore[arg-type]  # deliberately invalid
    assert err.value.param == "purpose"
    assert "bogus" in err.value.message


def test_fine_tune_upload_must_be_jsonl(client: OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("question,answer\nq,a\n")
    with open(path, "rb") as f, pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=f, purpose="fine-tune")
    assert err.value.param == "file"
    assert "data.csv" in err.value.message


def test_unknown_file_id_is_404(client: OpenAI) -> None:
    for call in (client.files.retrieve, client.files.delete, client.files.content):
        with pytest.raises(openai.NotFoundError):
            call("file-doesnotexist")


def test_oversized_upload_is_413_and_leaves_nothing_behind(client: OpenAI, server: Server, tmp_path: Path) -> None:
    before = sorted(p.name for p in (server.home / "blobs" / "files").iterdir())
    path = tmp_path / "big.jsonl"
    path.write_bytes(b'{"prompt": "x", "completion": "y"}\n' * (MAX_FILE_BYTES // 30))
    with open(path, "rb") as f, pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=f, purpose="fine-tune")
    assert err.value.status_code == 413
    assert err.value.param == "file"
    assert sorted(p.name for p in (server.home / "blobs" / "files").iterdir()) == before
    assert "big.jsonl" not in [f.filename for f in client.files.list()]
