"""`POST /v1/models/{model}/export`: the dashboard's Export button, answered with a tar archive."""

from __future__ import annotations

import io
import json
import shlex
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_ID, Server
from tests.models.conftest import _make_adapter

LORA_ID = f"ft:{TINY_ID}:tunehouse:api:ftjob-apiexport01"
HEAD_ID = f"ft:{TINY_ID}:tunehouse:apihead:ftjob-apiexport02"


@pytest.fixture(scope="module")
def http(server: Server, tiny_model_dir: Path) -> Iterator[httpx.Client]:
    """The server with two LoRA fine-tunes registered in its store: a plain one and one with a trained lm_head."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TUNEHOUSE_HOME", str(server.home))
        if "TUNEHOUSE_DATABASE_URL" in server.env:  # the server's store is in PostgreSQL (TUNEHOUSE_TEST_DB)
            env.setenv("TUNEHOUSE_DATABASE_URL", server.env["TUNEHOUSE_DATABASE_URL"])
        from tunehouse.models.catalog import register_trained_model

        for model_id, head in ((LORA_ID, None), (HEAD_ID, "trained")):
            job = model_id.rsplit(":", 1)[1]
            path = _make_adapter(tiny_model_dir, server.home / "models" / "ft" / job, head=head, seed=5)
            register_trained_model(model_id, kind="fine-tuned", path=path, base_model=TINY_ID, adapter=True, job_id=job)
    with httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer sk-local"}, timeout=600) as client:
        yield client


def scratch_emptied(server: Server, within: float = 15) -> bool:
    """Whether the server's scratch exports folder is empty (now, or within `within` seconds: it is
    removed after the response has been sent)."""
    deadline = time.time() + within
    while any((server.home / "exports").iterdir()):
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_export_answers_a_checked_archive_of_the_folder(http: httpx.Client, server: Server) -> None:
    response = http.post(f"/models/{LORA_ID}/export", json={"format": "vllm"})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    folder = "ft-tiny-llama-tunehouse-api-ftjob-apiexport01-vllm"
    assert f'filename="{folder}.tar"' in response.headers["content-disposition"]
    summary = json.loads(response.headers["x-tunehouse-export"])
    assert summary["passed"] is True and summary["logits_max_abs_diff"] == 0.0
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        names = set(tar.getnames())
        report = json.loads(tar.extractfile(f"{folder}/export-report.json").read())  # type: ignore[union-attr]
    assert {
        f"{folder}/adapter/adapter_model.safetensors",
        f"{folder}/adapter/adapter_config.json",
        f"{folder}/serve.sh",
        f"{folder}/README.md",
    } <= names
    assert shlex.split(report["commands"]["vllm"])[:6] == [
        "vllm", "serve", TINY_ID, "--enable-lora", "--lora-modules", f"{LORA_ID}={report['output']}/adapter",
    ]  # fmt: skip
    assert scratch_emptied(server), "the scratch folder is removed once the archive is sent"


def test_an_ollama_export_holds_the_gguf_and_its_modelfile(http: httpx.Client) -> None:
    response = http.post(
        f"/models/{LORA_ID}/export", json={"format": "ollama", "quantization": "q8_0", "verify": False}
    )

    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        files = {Path(name).name: tar.extractfile(name) for name in tar.getnames() if tar.getmember(name).isfile()}
        modelfile = files["Modelfile"].read().decode()  # type: ignore[union-attr]
        magic = files["model.gguf"].read(4)  # type: ignore[union-attr]
    assert magic == b"GGUF"
    assert "FROM ./model.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


@pytest.mark.parametrize(
    ("model", "body", "status", "code", "param"),
    [
        ("org/no-such-model", {"format": "gguf"}, 404, "model_not_found", "model"),
        (LORA_ID, {"format": "tarball"}, 400, "invalid_value", "format"),
        (LORA_ID, {"format": "merged", "quantization": "q8_0"}, 400, "invalid_value", "quantization"),
        (HEAD_ID, {"format": "vllm"}, 422, "export_refused", "format"),
        (LORA_ID, {}, 400, None, "format"),
    ],
)
def test_refusals_use_openais_error_envelope(
    http: httpx.Client, server: Server, model: str, body: dict, status: int, code: str | None, param: str
) -> None:
    response = http.post(f"/models/{model}/export", json=body)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    if code:
        assert error["code"] == code
    assert scratch_emptied(server)
