"""What a web page may do to a server on loopback, and how large a request may be (api/guard.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from tests.conftest import MAX_FILE_BYTES, TINY_ID, Server
from tests.support import chat_rows, write_jsonl

CHAT = "/chat/completions"


def _url(server: Server, path: str) -> str:
    return server.base_url + path


def test_a_foreign_host_header_is_refused(server: Server) -> None:
    # DNS rebinding: a page whose own name now points at 127.0.0.1 sends its name as Host.
    refused = httpx.get(_url(server, "/files"), headers={"Host": "attacker.example"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "host_not_allowed"
    for host in ("localhost", f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
        assert httpx.get(_url(server, "/files"), headers={"Host": host}).status_code == 200


def test_a_cross_site_form_post_is_refused_and_same_origin_is_not(server: Server, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", chat_rows(10))
    files = {"file": ("train.jsonl", path.read_bytes(), "application/octet-stream")}
    refused = httpx.post(
        _url(server, "/files"), files=files, data={"purpose": "fine-tune"}, headers={"Origin": "https://evil.example"}
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "origin_not_allowed"
    same = httpx.post(
        _url(server, "/files"),
        files=files,
        data={"purpose": "fine-tune"},
        headers={"Origin": f"http://127.0.0.1:{server.port}"},
    )
    assert same.status_code == 200, same.text
    # reading is not state-changing: a foreign Origin on a GET gets the same answer as none
    assert httpx.get(_url(server, "/models"), headers={"Origin": "https://evil.example"}).status_code == 200


def test_a_32_mb_chat_body_is_refused_before_it_is_read(server: Server) -> None:
    assert server.process is not None
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    body = b'{"model": "' + TINY_ID.encode() + b'", "messages": [{"role": "user", "content": "' + b"x" * (32 << 20)
    response = httpx.post(_url(server, CHAT), content=body + b'"}]}', headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert process.memory_info().rss - before < 64 << 20


def test_a_body_without_a_length_is_cut_off_at_the_limit(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "x", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * (1 << 20)
        yield b'"}]}'

    response = httpx.post(_url(server, CHAT), content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_an_upload_over_the_limit_is_refused_from_its_declared_length(server: Server, tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    big.write_bytes(b"x" * (MAX_FILE_BYTES + 2 * (1 << 20)))
    with open(big, "rb") as f:
        response = httpx.post(
            _url(server, "/files"), files={"file": ("big.jsonl", f)}, data={"purpose": "fine-tune"}, timeout=60
        )
    assert response.status_code == 413
