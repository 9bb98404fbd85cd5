"""The client CLI against a real server, run as a user runs it: `tunehouse files|jobs|chat …`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TINY_ID, Server, make_home
from tests.support import chat_rows, write_jsonl
from tunehouse.cli.follow import Snapshot, epoch_at


def tunehouse(server: Server, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "TUNEHOUSE_BASE_URL": server.base_url, "COLUMNS": "200", **env}
    for name in ("TUNEHOUSE_API_KEY", "OPENAI_API_KEY"):
        if name not in env:
            environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "tunehouse.cli.main", *args],
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    """One line, `Error: ` and the server's message, which starts with `message` (a model's 404 goes on
    to name the models served)."""
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {message}"), line
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-data")
    # Content no other test uploads, so `jobs create` uploads it rather than reusing an identical file.
    write_jsonl(folder / "train.jsonl", chat_rows(10, topic="cli colour"))
    write_jsonl(folder / "valid.jsonl", chat_rows(3, topic="cli shade"))
    write_jsonl(folder / "too_few.jsonl", chat_rows(3))
    return folder


@pytest.fixture(scope="module")
def followed(server: Server, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`jobs create` from local paths with --follow, as seed 003 does it."""
    return tunehouse(
        server,
        "jobs", "create", "-m", TINY_ID,
        "-t", str(data_dir / "train.jsonl"), "-v", str(data_dir / "valid.jsonl"),
        "--n-epochs", "1", "--suffix", "cli", "--metadata", "origin=cli", "--follow", "--interval", "0.3",
    )  # fmt: skip


@pytest.fixture(scope="module")
def job_id(followed: subprocess.CompletedProcess[str]) -> str:
    line = next(line for line in followed.stdout.splitlines() if line.startswith("Created fine-tuning job: "))
    return line.removeprefix("Created fine-tuning job: ")


def test_create_with_follow_shows_progress_and_exits_0(followed: subprocess.CompletedProcess[str]) -> None:
    assert followed.returncode == 0, followed.stdout + followed.stderr
    out = followed.stdout
    assert "Uploaded training file train.jsonl: file-" in followed.stderr
    assert "Validating training file" in out  # the job's messages, as they happen
    assert "Step 10/10  epoch 1/1  loss " in out  # the final progress line
    assert "(valid " in out
    assert "The job has successfully completed" in out
    assert f"Job complete! Status: succeeded. Fine-tuned model: ft:{TINY_ID}:tunehouse:cli:" in out


def test_files_upload_and_list(server: Server, data_dir: Path) -> None:
    uploaded = tunehouse(server, "files", "upload", str(data_dir / "valid.jsonl"), "--json")
    assert uploaded.returncode == 0, uploaded.stderr
    file = json.loads(uploaded.stdout)
    assert file["purpose"] == "fine-tune" and file["filename"] == "valid.jsonl"

    listed = tunehouse(server, "files", "list", "--json")
    assert file["id"] in [f["id"] for f in json.loads(listed.stdout)]
    table = tunehouse(server, "files", "list", "--purpose", "fine-tune")
    assert file["id"] in table.stdout and "valid.jsonl" in table.stdout


def test_create_reuses_an_identical_upload(server: Server, data_dir: Path, job_id: str) -> None:
    created = tunehouse(
        server,
        "jobs",
        "create",
        "-m",
        TINY_ID,
        "-t",
        str(data_dir / "train.jsonl"),
        "--n-epochs",
        "1",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    assert "Reusing training file train.jsonl: file-" in created.stderr
    job = json.loads(created.stdout)
    assert tunehouse(server, "jobs", "cancel", job["id"]).returncode in (0, 1)  # may already be done


def test_list_get_events_results(server: Server, job_id: str) -> None:
    listed = tunehouse(server, "jobs", "list", "--json")
    assert job_id in [j["id"] for j in json.loads(listed.stdout)]
    assert job_id in tunehouse(server, "jobs", "list").stdout

    job = json.loads(tunehouse(server, "jobs", "get", job_id).stdout)
    assert job["status"] == "succeeded" and job["metadata"]["origin"] == "cli"  # (and soon its eval's id)

    lines = tunehouse(server, "jobs", "events", job_id, "--all").stdout.splitlines()
    events = [line for line in lines if "Evaluation eval_" not in line]  # the eval that follows the job
    assert events[0].endswith(f"Created fine-tuning job: {job_id}")  # oldest first
    assert events[-1].endswith("The job has successfully completed")
    assert sum("Step " in line for line in events) == 10

    latest = tunehouse(server, "jobs", "events", job_id, "--limit", "4", "--json")
    assert "The job has successfully completed" in [e["message"] for e in json.loads(latest.stdout)]

    csv_text = tunehouse(server, "jobs", "results", job_id).stdout
    assert csv_text.splitlines()[0].startswith("step,train_loss,train_accuracy,valid_loss")
    assert len(csv_text.splitlines()) == 11


def test_plot_writes_a_png_with_train_and_validation_curves(server: Server, job_id: str, tmp_path: Path) -> None:
    output = tmp_path / "loss.png"
    result = tunehouse(server, "jobs", "plot", job_id, "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert f"Wrote {output} (10 steps, epoch 1)" in result.stdout
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import matplotlib.image

    height, width, _ = matplotlib.image.imread(output).shape
    assert width > height > 300


def test_follow_exits_non_zero_when_the_job_fails(server: Server, data_dir: Path) -> None:
    created = tunehouse(server, "jobs", "create", "-m", TINY_ID, "-t", str(data_dir / "too_few.jsonl"), "--json")
    job = json.loads(created.stdout)
    followed = tunehouse(server, "jobs", "follow", job["id"], "--interval", "0.3")
    assert followed.returncode == 1
    assert followed.stderr.startswith(f"Error: Job {job['id']} failed: ")
    assert "Traceback" not in followed.stderr


def test_follow_a_finished_job_exits_at_once(server: Server, job_id: str) -> None:
    result = tunehouse(server, "jobs", "follow", job_id)
    assert result.returncode == 0 and "Job complete!" in result.stdout


def test_chat_streams_replies_from_piped_input(server: Server, job_id: str) -> None:
    model = json.loads(tunehouse(server, "jobs", "get", job_id).stdout)["fine_tuned_model"]
    result = tunehouse(server, "chat", model, "--max-tokens", "4", stdin="What is the colour of item 1?\n/reset\nhi\n")
    assert result.returncode == 0, result.stderr
    # One streamed reply before the reset and one after (a random model's reply may hold newlines).
    _, after = result.stdout.split("\n(conversation reset)\n")  # exactly one reset line
    assert after.endswith("\n")


def test_server_errors_are_one_line(server: Server, data_dir: Path) -> None:
    assert_clean_error(tunehouse(server, "jobs", "get", "ftjob-nope"), "No such fine-tuning job: ftjob-nope")
    assert_clean_error(
        tunehouse(server, "jobs", "create", "-m", "no-such-model", "-t", "file-nope"),
        "The model 'no-such-model' does not exist or you do not have access to it.",
    )
    assert_clean_error(
        tunehouse(server, "jobs", "create", "-m", TINY_ID, "-t", "missing.jsonl"),
        "training file 'missing.jsonl' is neither a file id (file-…) nor a local file.",
    )
    assert_clean_error(
        tunehouse(server, "chat", "no-such-model", stdin="hi\n"),
        "The model 'no-such-model' does not exist or you do not have access to it.",
    )
    refused = tunehouse(server, "jobs", "list", "--base-url", "http://127.0.0.1:9/v1")
    assert refused.returncode == 1 and refused.stderr.startswith("Error: Cannot reach http://127.0.0.1:9")


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path) -> Iterator[Server]:
    srv = Server(make_home(tmp_path_factory.mktemp("keyed"), shipped_model_dir), api_key="sk-cli-test-key")
    srv.start()
    yield srv
    srv.stop()


def test_api_key_from_flag_or_environment(keyed_server: Server) -> None:
    missing = tunehouse(keyed_server, "files", "list")
    assert missing.returncode == 1 and missing.stderr.startswith("Error: The server requires an API key")
    wrong = tunehouse(keyed_server, "files", "list", "--api-key", "sk-wrong-key-123")
    assert wrong.returncode == 1 and wrong.stderr.startswith("Error: Incorrect API key provided")
    assert tunehouse(keyed_server, "files", "list", "--api-key", "sk-cli-test-key").returncode == 0
    assert tunehouse(keyed_server, "files", "list", TUNEHOUSE_API_KEY="sk-cli-test-key").returncode == 0
    assert tunehouse(keyed_server, "files", "list", OPENAI_API_KEY="sk-cli-test-key").returncode == 0


def test_progress_fields() -> None:
    assert [epoch_at(s, 30, 3) for s in (1, 10, 11, 30)] == [1, 1, 2, 3]
    assert epoch_at(5, 30, None) is None
    snapshot = Snapshot()
    snapshot.update({"step": 4, "total_steps": 30, "train_loss": 1.23456})

    class Job:
        status = "running"
        estimated_finish = None

        class hyperparameters:  # noqa: N801
            n_epochs = 3

    assert snapshot.line(Job()) == "Step 4/30  epoch 1/3  loss 1.2346  ETA -"
