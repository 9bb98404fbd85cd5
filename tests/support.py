"""Helpers the tests share: writing JSONL training files and waiting on jobs like a user would."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from openai import OpenAI
from openai.types.fine_tuning import FineTuningJob

TERMINAL = {"succeeded", "failed", "cancelled"}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat_rows(n: int, topic: str = "colour") -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": f"What is the {topic} of item {i}?"},
                {"role": "assistant", "content": f"Item {i} is {['red', 'green', 'blue'][i % 3]}."},
            ]
        }
        for i in range(n)
    ]


def upload_rows(client: OpenAI, tmp_path: Path, rows: list[dict[str, Any]], name: str = "train.jsonl") -> str:
    path = write_jsonl(tmp_path / name, rows)
    with open(path, "rb") as f:
        return client.files.create(file=f, purpose="fine-tune").id


def wait_for_job(client: OpenAI, job_id: str, timeout: float = 300, until: set[str] = TERMINAL) -> FineTuningJob:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


def add_broken_model(server: Any, tmp_path: Path, name: str) -> str:
    """Register a model folder whose weights cannot load, so its trainer crashes; returns its id."""
    broken = tmp_path / name
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    (broken / "tokenizer.json").write_text("{}")
    assert server.cli("models", "add", name, str(broken)).returncode == 0
    return name


class WebhookReceiver:
    """A real HTTP server on loopback that records each POST (body and headers), answering 200, or
    first the statuses in `answers`. Made on a chosen port, it can be started after the sender tried."""

    def __init__(self, port: int, answers: tuple[int, ...] = ()) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hooks"
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.answers = list(answers)
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = receiver.answers.pop(0) if receiver.answers else 200
                if status == 200:
                    receiver.received.append((body, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def wait_for(self, count: int, timeout: float = 60) -> list[tuple[bytes, dict[str, str]]]:
        deadline = time.time() + timeout
        while len(self.received) < count:
            if time.time() > deadline:
                raise AssertionError(f"the receiver got {len(self.received)} of {count} deliveries in {timeout}s")
            time.sleep(0.1)
        return self.received
