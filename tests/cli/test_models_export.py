"""`tunehouse models export` run as a user runs it, on a model a real job trained on the server."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from tests.conftest import TINY_ID, Server
from tests.support import chat_rows, upload_rows, wait_for_job


def export(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunehouse.cli.main", "models", "export", *args],
        env={**os.environ, "TUNEHOUSE_HOME": str(server.home), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def fine_tune(server: Server, client: OpenAI, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A LoRA fine-tune of the tiny Llama, trained for two steps by the server's worker."""
    train = upload_rows(client, tmp_path_factory.mktemp("export-data"), chat_rows(10), name="export.jsonl")
    job = client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=train, suffix="export", hyperparameters={"n_epochs": 1, "batch_size": 5}
    )
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model
    return done.fine_tuned_model


def test_a_trained_fine_tune_exports_for_vllm_and_prints_the_serve_line(
    server: Server, fine_tune: str, tmp_path: Path
) -> None:
    out = tmp_path / "for-vllm"
    result = export(server, fine_tune, "--format", "vllm", "-o", str(out))

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    serve_line = next(line for line in result.stdout.splitlines() if line.startswith("vllm: "))
    assert shlex.split(serve_line.removeprefix("vllm: ")) == [
        "vllm", "serve", TINY_ID, "--enable-lora",
        "--lora-modules", f"{fine_tune}={out / 'adapter'}",
        "--max-lora-rank", "16",
    ]  # fmt: skip
    assert "max |difference| 0 " in result.stdout
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY_ID  # not the trainer's local path
    assert "Checking the exported adapter" in result.stderr  # the steps, as they run


def test_json_output_is_the_report(server: Server, fine_tune: str, tmp_path: Path) -> None:
    result = export(server, fine_tune, "--format", "merged", "-o", str(tmp_path / "merged"), "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["format"] == "merged" and report["model"] == fine_tune
    assert report["logits"]["max_abs_diff"] < report["logits"]["tolerance"]
    assert json.loads((tmp_path / "merged" / "export-report.json").read_text()) == report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "merged", "--quantization", "q8_0"], "--quantization applies to the gguf and ollama formats"),
        (["--format", "tarball"], "Unknown export format 'tarball'"),
    ],
)
def test_mistakes_are_one_clean_line(
    server: Server, fine_tune: str, tmp_path: Path, args: list[str], message: str
) -> None:
    result = export(server, fine_tune, *args, "-o", str(tmp_path / "out"))

    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {message}") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_an_unknown_model_says_so(server: Server, tmp_path: Path) -> None:
    result = export(server, "gpt-5-nonexistent", "--format", "gguf", "-o", str(tmp_path / "out"))

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: The model 'gpt-5-nonexistent' does not exist")
