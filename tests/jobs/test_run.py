"""The trainer child's job glue (jobs/run.py): how a job ends when training goes wrong."""

from __future__ import annotations

from pathlib import Path

import torch
from openai import OpenAI
from safetensors.torch import load_file, save_file

from tests.conftest import Server
from tests.support import chat_rows, upload_rows, wait_for_job
from tunehouse.models.random_init import build_random_llama


def nan_model(shipped_model_dir: Path, target: Path) -> Path:
    """The tiny random Llama with one NaN in its embeddings: every loss it gives is NaN."""
    folder = build_random_llama("tiny", shipped_model_dir, target)
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    name = next(n for n in tensors if "embed_tokens" in n)
    tensors[name][:, 0] = torch.nan
    save_file(tensors, weights, metadata={"format": "pt"})
    return folder


def test_a_job_whose_loss_becomes_nan_fails_as_diverged_and_publishes_no_model(
    server: Server, client: OpenAI, shipped_model_dir: Path, tmp_path: Path
) -> None:
    added = server.cli("models", "add", "test/nan-llama", str(nan_model(shipped_model_dir, tmp_path / "nan")))
    assert added.returncode == 0, added.stderr
    job = client.fine_tuning.jobs.create(
        model="test/nan-llama", training_file=upload_rows(client, tmp_path, chat_rows(10))
    )
    done = wait_for_job(client, job.id)
    assert done.status == "failed" and done.error is not None
    assert done.error.code == "training_diverged"
    assert done.fine_tuned_model is None
    assert not [m for m in client.models.list() if job.id[-8:] in m.id]
