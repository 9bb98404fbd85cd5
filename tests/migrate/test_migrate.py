"""`tunehouse migrate`: a second tunehouse server stands in for OpenAI. Two jobs trained there (a chat
job with a validation file, a legacy prompt/completion job without one) are carried over into another store while its server runs: files,
settings, training, the source's `ft:` ids answering here, the report, and a rerun that does nothing.
A proxy in front of the source refuses file downloads exactly as OpenAI does, for `--files-dir`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from openai.types.fine_tuning import FineTuningJob

from tests.conftest import SHIPPED_ID, TINY_ID, Server, free_port, make_home, running_server
from tests.support import chat_rows, upload_rows, wait_for_job

SOURCE_KEY = "sk-source-key"
QUIET = {"TUNEHOUSE_AUTO_EVAL_EXAMPLES": "0"}  # no automatic base-vs-fine-tuned eval: the test compares itself
GOLDEN = 4


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path) -> Iterator[Server]:
    home = make_home(tmp_path_factory.mktemp("source"), shipped_model_dir)
    with running_server(home, tiny_model_dir, api_key=SOURCE_KEY, env=QUIET) as srv:
        yield srv


@pytest.fixture(scope="module")
def source_jobs(source: Server, tmp_path_factory: pytest.TempPathFactory) -> list[FineTuningJob]:
    """Two jobs that succeeded on the source, with different files, suffixes, seeds and hyperparameters."""
    client = source.client()
    data = tmp_path_factory.mktemp("data")
    train = upload_rows(client, data, chat_rows(12), "colours-train.jsonl")
    valid = upload_rows(client, data, chat_rows(5, topic="shade"), "colours-valid.jsonl")
    legacy = [{"prompt": f"Item {i} size ->", "completion": f" {['small', 'large'][i % 2]}\n"} for i in range(10)]
    plain = upload_rows(client, data, legacy, "sizes.jsonl")
    first = client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=train,
        validation_file=valid,
        suffix="colours",
        seed=11,
        metadata={"team": "docs"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}}},
    )
    second = client.fine_tuning.jobs.create(
        model=TINY_ID, training_file=plain, suffix="sizes", seed=7, hyperparameters={"learning_rate_multiplier": 2}
    )
    done = [wait_for_job(client, job.id) for job in (first, second)]
    assert [job.status for job in done] == ["succeeded", "succeeded"], [job.error for job in done]
    return done


def cli_env(home: Path) -> dict[str, str]:
    env = Server(home).env | QUIET
    env.pop("OPENAI_API_KEY", None)
    return env


def migrate(home: Path, *args: str) -> tuple[int, str]:
    """Run `tunehouse migrate ARGS` on the store at `home`; its exit code and output (stdout, stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "tunehouse.cli.main", "migrate", *args],
        env=cli_env(home),
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return result.returncode, output


def counts(client: OpenAI) -> tuple[int, int]:
    return len(client.fine_tuning.jobs.list(limit=100).data), len(client.files.list().data)


def answer(client: OpenAI, model: str) -> str:
    """The model's greedy answer: a chat reply, or for the legacy job a raw completion."""
    if ":sizes:" in model:
        return (
            client.completions.create(model=model, prompt="Item 3 size ->", max_tokens=8, temperature=0).choices[0].text
        )
    ask = [{"role": "user", "content": "What is the colour of item 4?"}]
    reply = client.chat.completions.create(model=model, messages=ask, max_tokens=8, temperature=0)
    return reply.choices[0].message.content or ""


def suffix_of(model: str) -> str:
    return model.rsplit(":", 2)[-2]


def test_jobs_files_and_settings_move_over_train_and_answer_under_the_source_ids(
    source: Server,
    source_jobs: list[FineTuningJob],
    tmp_path: Path,
    shipped_model_dir: Path,
    tiny_model_dir: Path,
) -> None:
    from_source = ["--from-base-url", source.base_url, "--from-api-key", SOURCE_KEY, "--golden", str(GOLDEN)]
    report = tmp_path / "out" / "report.md"
    with running_server(make_home(tmp_path / "here", shipped_model_dir), tiny_model_dir, env=QUIET) as here:
        client, origin = here.client(), source.client()

        code, output = migrate(here.home, *from_source, "--dry-run")
        assert code == 0, output
        for job in source_jobs:
            assert job.id in output and f"alias {job.fine_tuned_model}" in output
        assert "copy the training file" in output and "colours-train.jsonl" in output
        assert "create a job on 'tiny-llama' (the same model here)" in output
        assert counts(client) == (0, 0)  # a dry run changes nothing

        code, output = migrate(here.home, *from_source, "--report", str(report))
        assert code == 0, output

        copies = {job.metadata["migrated_from"]: job for job in client.fine_tuning.jobs.list(limit=100).data}
        assert set(copies) == {job.id for job in source_jobs}
        for job in source_jobs:
            copy = copies[job.id]
            assert copy.status == "succeeded", copy.error
            assert copy.model == job.model and copy.seed == job.seed
            assert copy.method.type == job.method.type
            assert copy.hyperparameters == job.hyperparameters  # the numbers the source resolved
            assert copy.metadata == {**(job.metadata or {}), "migrated_from": job.id}
            assert suffix_of(copy.fine_tuned_model) == suffix_of(job.fine_tuned_model)
            for mine, theirs in ((copy.training_file, job.training_file), (copy.validation_file, job.validation_file)):
                assert (mine is None) == (theirs is None)
                if theirs is not None:
                    assert client.files.retrieve(mine).filename == origin.files.retrieve(theirs).filename
                    assert client.files.content(mine).read() == origin.files.content(theirs).read()

            # Code written against the source runs unchanged here: the old id answers, as the new model.
            assert job.fine_tuned_model in output and copy.fine_tuned_model in output
            assert answer(client, job.fine_tuned_model) == answer(client, copy.fine_tuned_model)

        assert report.exists() and "| source model | model here |" in report.read_text()
        figures = {entry["source_job"]: entry for entry in json.loads(report.with_suffix(".json").read_text())["jobs"]}
        for job in source_jobs:
            entry = figures[job.id]
            assert entry["stage"] == "compared" and entry["fine_tuned_model"] == copies[job.id].fine_tuned_model
            assert entry["aliases"][0] == job.fine_tuned_model
            comparison = entry["comparison"]
            assert comparison["n"] == GOLDEN
            # Same files, settings, seed and base weights train the same model: the same greedy answers.
            assert comparison["exact_match_rate"] == 1.0 and comparison["mean_similarity"] == 1.0, comparison
            assert len(comparison["examples"]) == 3
        with_validation, without = (figures[job.id]["golden"]["origin"] for job in source_jobs)
        assert "validation file colours-valid.jsonl" in with_validation
        assert "training file sizes.jsonl" in without and "no validation file" in without

        before = counts(client)
        code, output = migrate(here.home, *from_source, "--report", str(report))
        assert code == 0, output
        assert output.count("already migrated") == 2
        assert counts(client) == before  # nothing migrated twice


def test_a_base_model_not_served_here_is_refused_naming_map_model(
    source: Server, source_jobs: list[FineTuningJob], tmp_path: Path, shipped_model_dir: Path
) -> None:
    home = make_home(tmp_path / "bare", shipped_model_dir)  # no tiny-llama here
    from_source = ["--from-base-url", source.base_url, "--from-api-key", SOURCE_KEY]
    code, output = migrate(home, *from_source)
    assert code == 1
    assert f"fine-tunes '{TINY_ID}', which is not a model or alias here" in output
    assert f"--map-model {TINY_ID}=MODEL" in output and "Nothing was migrated" in output
    assert not (home / "blobs").exists() or not any((home / "blobs").rglob("*"))

    code, output = migrate(home, *from_source, "--map-model", f"{TINY_ID}={SHIPPED_ID}", "--dry-run")
    assert code == 0, output
    assert f"create a job on '{SHIPPED_ID}' (mapped by --map-model" in output


@pytest.mark.parametrize(
    ("url", "key", "said"),
    [
        ("source", "sk-wrong", "refused the API key"),
        (f"http://127.0.0.1:{free_port()}/v1", SOURCE_KEY, "cannot reach the source"),
    ],
)
def test_a_source_that_refuses_or_is_away_is_one_line(
    source: Server, tmp_path: Path, shipped_model_dir: Path, url: str, key: str, said: str
) -> None:
    code, output = migrate(
        make_home(tmp_path, shipped_model_dir),
        "--from-base-url",
        source.base_url if url == "source" else url,
        "--from-api-key",
        key,
    )
    assert code == 1
    assert said in output and len(output.strip().splitlines()) <= 3


class RefusingDownloads(BaseHTTPRequestHandler):
    """Forwards every request to the source, but refuses file downloads with OpenAI's own answer."""

    upstream = ""

    def _forward(self) -> None:
        if self.path.startswith("/v1/files/") and self.path.endswith("/content"):
            self._reply(
                400,
                b'{"error": {"message": "Not allowed to download files of purpose: fine-tune.", '
                b'"type": "invalid_request_error", "param": null, "code": null}}',
                {},
            )
            return
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
        answer = httpx.request(self.command, self.upstream + self.path, content=body, headers=headers, timeout=120)
        self._reply(answer.status_code, answer.content, {"content-type": answer.headers.get("content-type", "")})

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("content-type", headers.get("content-type") or "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _forward

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def like_openai(source: Server) -> Iterator[str]:
    handler = type("Proxy", (RefusingDownloads,), {"upstream": f"http://127.0.0.1:{source.port}"})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{proxy.server_address[1]}/v1"
    proxy.shutdown()


def test_files_openai_will_not_hand_out_come_from_files_dir(
    source: Server,
    source_jobs: list[FineTuningJob],
    like_openai: str,
    tmp_path: Path,
    shipped_model_dir: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = source_jobs[1]  # no validation file: one file to bring
    home = make_home(tmp_path / "here", shipped_model_dir)
    assert Server(home).cli("models", "add", TINY_ID, str(tiny_model_dir)).returncode == 0
    report = ["--report", str(tmp_path / "report.md")]
    args = ["--from-base-url", like_openai, "--from-api-key", SOURCE_KEY, "--job", job.id, "--golden", "2", *report]

    code, output = migrate(home, *args)
    assert code == 1
    assert f"Job {job.id}: the source does not hand out its training file {job.training_file}" in output
    assert "Not allowed to download files of purpose: fine-tune" in output and "--files-dir" in output

    originals = tmp_path / "originals"
    originals.mkdir()
    original = source.client().files.content(job.training_file).read()
    (originals / "sizes.jsonl").write_bytes(original[:-10])
    code, output = migrate(home, *args, "--files-dir", str(originals))
    assert code == 1 and "it is not the file the job trained on" in output

    (originals / "sizes.jsonl").write_bytes(original)
    args += ["--files-dir", str(originals)]
    # No worker runs on this store, so the command waits for training: Ctrl-C it there.
    waiting = subprocess.Popen(
        [sys.executable, "-m", "tunehouse.cli.main", "migrate", *args],
        env=cli_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A suite started in the background (`make test &`) ignores SIGINT, and children inherit that:
        # give the command the default disposition, so Python turns the signal into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert waiting.stdout is not None
    shown: list[str] = []
    while not shown or "created ftjob-" not in shown[-1]:
        line = waiting.stdout.readline()
        assert line, "".join(shown)  # it ended before creating the job
        shown.append(line)
    waiting.send_signal(signal.SIGINT)
    output = "".join(shown) + waiting.communicate(timeout=120)[0]
    assert waiting.returncode == 130, output
    assert "Interrupted" in output and "run the same command again to resume" in output and "Traceback" not in output

    code, output = migrate(home, *args, "--no-wait")  # resumes: the job made before Ctrl-C is not made again
    assert code == 0, output
    assert "1 job is training here; run the same command again" in output and "created ftjob-" not in output

    monkeypatch.setenv("TUNEHOUSE_HOME", str(home))  # read the store the command wrote
    from tunehouse.jobs.records import list_jobs
    from tunehouse.store.files import file_path, list_files

    (copy,) = list_files(None, 10, "desc", None).items
    assert file_path(copy).read_bytes() == original and copy.filename == "sizes.jsonl"
    (created,) = list_jobs(None, 10, None).items
    assert (created.training_file, created.job_metadata) == (copy.id, {"migrated_from": job.id})
