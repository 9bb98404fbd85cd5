"""Model aliases: OpenAI's model names resolve to models served here, in every route and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import SHIPPED_ID, TINY_ID, Server, make_home, running_server
from tests.support import chat_rows, upload_rows, wait_for_job


def test_openai_names_stand_for_the_shipped_model_by_default(client: OpenAI) -> None:
    listed = {m.id: m for m in client.models.list()}
    for name in ("gpt-3.5-turbo", "gpt-4o-mini-2024-07-18", "davinci", "babbage-002", "text-davinci-003"):
        assert listed[name].model_extra == {"parent": SHIPPED_ID, "root": SHIPPED_ID}
    assert listed[SHIPPED_ID].model_extra["parent"] is None  # a base derives from nothing
    assert client.models.retrieve("gpt-3.5-turbo").id == "gpt-3.5-turbo"
    reply = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Say hi"}], max_tokens=3, temperature=0
    )
    assert reply.choices[0].message.content


def test_an_unknown_model_names_the_nearest_and_the_served_ones(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-3.5-turbo-9999", messages=[{"role": "user", "content": "hi"}])
    message = err.value.message
    assert "'gpt-3.5-turbo-9999' does not exist" in message
    assert "Did you mean 'gpt-3.5-turbo" in message and SHIPPED_ID in message and TINY_ID in message
    assert err.value.code == "model_not_found" and err.value.param == "model"


def test_cli_aliases_are_made_listed_used_and_removed(server: Server, client: OpenAI) -> None:
    made = server.cli("models", "alias", "support-bot", TINY_ID)
    assert made.returncode == 0, made.stderr
    assert "support-bot" in server.cli("models", "aliases").stdout
    model = client.models.retrieve("support-bot")
    assert (model.id, model.model_extra["parent"]) == ("support-bot", TINY_ID)
    reply = client.completions.create(model="support-bot", prompt="Hello", max_tokens=2)
    assert reply.choices[0].text is not None

    chained = server.cli("models", "alias", "support-bot-v2", "support-bot")  # an alias of an alias: followed
    assert chained.returncode == 0, chained.stderr
    assert client.models.retrieve("support-bot-v2").model_extra["parent"] == TINY_ID

    with pytest.raises(openai.BadRequestError) as err:
        client.models.delete("support-bot")  # deleting an alias never deletes what it names
    assert "alias" in err.value.message and "unalias" in err.value.message
    assert server.cli("models", "unalias", "support-bot").returncode == 0
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("support-bot")
    assert client.models.retrieve(TINY_ID).id == TINY_ID


def test_cli_alias_refusals_are_one_line(server: Server) -> None:
    cases = {
        ("models", "alias", "x-bot", "no/such-model"): "does not exist",
        ("models", "alias", TINY_ID, SHIPPED_ID): "registered model",
        ("models", "unalias", "gpt-3.5-turbo"): "shipped alias",
        ("models", "unalias", "never-made"): "no alias named",
    }
    for args, expected in cases.items():
        done = server.cli(*args)
        assert done.returncode == 1 and expected in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


@pytest.fixture(scope="module")
def aliased_server(
    tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path
) -> Iterator[Server]:
    """A server whose operator points OpenAI's names at the tiny model (TUNEHOUSE_MODEL_ALIASES)."""
    home = make_home(tmp_path_factory.mktemp("aliased"), shipped_model_dir)
    aliases = f"gpt-3.5-turbo={TINY_ID},davinci={TINY_ID},curie={TINY_ID},text-davinci-003={TINY_ID}"
    with running_server(home, tiny_model_dir, env={"TUNEHOUSE_MODEL_ALIASES": aliases}) as srv:
        yield srv


def test_a_job_keeps_the_alias_it_was_given_and_trains_what_it_names(aliased_server: Server, tmp_path: Path) -> None:
    client = aliased_server.client()
    assert client.models.retrieve("gpt-3.5-turbo").model_extra["parent"] == TINY_ID  # settings beat shipped
    training_file = upload_rows(client, tmp_path, chat_rows(10))
    job = client.fine_tuning.jobs.create(training_file=training_file, model="gpt-3.5-turbo")  # seed 002, as written
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.model == "gpt-3.5-turbo" and done.fine_tuned_model.startswith("ft:gpt-3.5-turbo:")
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert f"Model 'gpt-3.5-turbo' is an alias: this job fine-tunes {TINY_ID}" in messages
    fine_tuned = client.models.retrieve(done.fine_tuned_model)
    assert (fine_tuned.model_extra["parent"], fine_tuned.model_extra["root"]) == (TINY_ID, TINY_ID)
    reply = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "What is a loss function?"}], max_tokens=4
    )
    assert reply.choices[0].message.role == "assistant"


def test_explicit_nulls_mean_defaults_on_job_routes(aliased_server: Server, tmp_path: Path) -> None:
    client = aliased_server.client()
    http = httpx.Client(base_url=aliased_server.base_url, headers={"Authorization": "Bearer sk-local"}, timeout=60)
    training_file = upload_rows(client, tmp_path, chat_rows(10))
    nulls = {"validation_file": None, "hyperparameters": None, "suffix": None, "seed": None, "metadata": None}
    created = http.post("/fine_tuning/jobs", json={"training_file": training_file, "model": TINY_ID, **nulls})
    assert created.status_code == 200, created.text
    legacy = http.post("/fine-tunes", json={"training_file": training_file, "model": None, "n_epochs": None})
    assert legacy.status_code == 200, legacy.text
    assert legacy.json()["model"] == "curie"  # null: the legacy route's default model, as OpenAI's was
    for job_id in (created.json()["id"], legacy.json()["id"]):
        client.fine_tuning.jobs.cancel(job_id)


# --- the seeds' 0.x SDK and CLI, as written (openai 0.28 in its own venv: it cannot share ours) -----------------
OPENAI_0X = Path(__file__).resolve().parents[2] / ".cache" / "openai0"


@pytest.fixture(scope="module")
def openai_0x() -> Path:
    """The 0.28 SDK's python, installed once per machine from the package index."""
    python = OPENAI_0X / "bin" / "python"
    if not (OPENAI_0X / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(OPENAI_0X)], check=True)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "openai==0.28.1"], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot install openai==0.28.1 from the package index: {done.stderr[-500:]}")
        (OPENAI_0X / ".installed").touch()
    return python


def run_0x(python: Path, server: Server, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_BASE": server.base_url, "OPENAI_API_KEY": "your-api-key"}
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


SEED_000 = """
import openai
openai.api_key = 'your-api-key'
# Upload the training file
response = openai.File.create( file=open("training_data.jsonl", "rb"), purpose='fine-tune' )
print("File ID:", response['id'])
response = openai.FineTune.create(training_file=response['id'])
print("Fine-tune ID:", response['id'])
"""


def test_seed_000_uploads_and_fine_tunes_with_the_0x_sdk(
    openai_0x: Path, aliased_server: Server, tmp_path: Path
) -> None:
    rows = [
        {"prompt": f"User: How do I reset password {i}?\nAI:", "completion": f" Use reset link {i}."} for i in range(10)
    ]
    (tmp_path / "training_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "seed_000.py").write_text(SEED_000)
    done = run_0x(openai_0x, aliased_server, ["seed_000.py"], tmp_path)
    assert done.returncode == 0, done.stderr
    file_id = done.stdout.split("File ID:")[1].split()[0]
    job_id = done.stdout.split("Fine-tune ID:")[1].split()[0]
    client = aliased_server.client()
    assert client.files.retrieve(file_id).filename == "file"  # what the 0.x SDK names every upload
    assert wait_for_job(client, job_id).status == "succeeded"


def test_seed_003_cli_fine_tunes_davinci_and_completes(openai_0x: Path, aliased_server: Server, tmp_path: Path) -> None:
    rows = [{"prompt": f"What is item {i}?\n\n###\n\n", "completion": f" Item {i} is blue.###"} for i in range(10)]
    (tmp_path / "training_data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    openai_cli = [str(openai_0x.parent / "openai")]
    created = run_0x(
        openai_0x,
        aliased_server,
        [*openai_cli, "api", "fine_tunes.create", "-t", "training_data.jsonl", "-m", "davinci"],
        tmp_path,
    )
    assert created.returncode == 0, created.stderr + created.stdout
    fine_tuned = created.stdout.split("completions.create -m ")[1].split()[0]  # the line the CLI ends with
    assert fine_tuned.startswith("ft:davinci:")
    answered = run_0x(
        openai_0x,
        aliased_server,
        [*openai_cli, "api", "completions.create", "-m", fine_tuned, "-p", "What is item 3?\n\n###\n\n", "-M", "8"],
        tmp_path,
    )
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.startswith("What is item 3?")  # the 0.x CLI prints prompt + completion


def test_seed_003_query_gpt_with_text_davinci_003(openai_0x: Path, aliased_server: Server, tmp_path: Path) -> None:
    script = """
import openai
openai.api_key = "..."
response = openai.Completion.create(model="text-davinci-003", prompt="An article.\\n\\n###\\nWrite three questions.", temperature=0.7, max_tokens=512)
print(repr(response['choices'][0]['text']), response['model'])
"""
    (tmp_path / "query_gpt.py").write_text(script)
    done = run_0x(openai_0x, aliased_server, ["query_gpt.py"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("text-davinci-003")


def test_0x_cli_chat_completions_sends_nulls_and_gets_an_answer(
    openai_0x: Path, aliased_server: Server, tmp_path: Path
) -> None:
    openai_cli = str(openai_0x.parent / "openai")
    args = [openai_cli, "api", "chat_completions.create", "-m", "gpt-3.5-turbo", "-g", "user", "Hello", "-M", "5"]
    done = run_0x(openai_0x, aliased_server, args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
