"""Helpers the tests share: writing JSONL training files and waiting on jobs like a user would."""

from __future__ import annotations

import json
import time
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
