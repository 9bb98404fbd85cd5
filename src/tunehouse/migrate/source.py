"""The source of a migration: any server that speaks OpenAI's fine-tuning API, through the official SDK.

Reads the source's jobs, files and checkpoints, and asks its fine-tuned models for answers. Every
failure becomes one `MigrationFailed` line naming the job and what to do: an unreachable server,
a refused key, a file the source will not hand out. OpenAI refuses to download files of purpose
`fine-tune` ("Not allowed to download files of purpose: fine-tune"); their originals are then looked
up by filename in `--files-dir`, and must have the size the source reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from openai import OpenAI

from tunehouse.errors import MigrationFailed

TIMEOUT_SECONDS = 120.0
RETRIES = 2


@dataclass(frozen=True)
class SourceFile:
    id: str
    filename: str
    bytes: int | None


def _message(exc: openai.APIError) -> str:
    """The server's own message from OpenAI's error envelope."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return exc.message


class Source:
    """A connection to the source server; `url` (without a trailing slash) keys its migrations here."""

    def __init__(self, base_url: str, api_key: str, files_dir: Path | None = None) -> None:
        self.url = base_url.rstrip("/")
        self.files_dir = files_dir
        self._client = OpenAI(base_url=self.url, api_key=api_key, timeout=TIMEOUT_SECONDS, max_retries=RETRIES)

    @contextmanager
    def _calls(self, doing: str) -> Iterator[None]:
        """Turn the SDK's errors into one line: `doing` says which job and step it was."""
        try:
            yield
        except openai.APIConnectionError as exc:
            raise MigrationFailed(
                f"{doing}: cannot reach the source {self.url} ({exc.__cause__ or exc.message}). "
                "Check --from-base-url (it ends in /v1) and that the server is up."
            ) from exc
        except openai.AuthenticationError as exc:
            raise MigrationFailed(
                f"{doing}: the source {self.url} refused the API key ({_message(exc)}). Pass a valid --from-api-key."
            ) from exc
        except openai.APIStatusError as exc:
            hint = " Check --from-base-url (it ends in /v1)." if exc.status_code == 404 else ""
            raise MigrationFailed(f"{doing}: the source answered {exc.status_code}: {_message(exc)}{hint}") from exc
        except openai.APIError as exc:
            raise MigrationFailed(f"{doing}: the source's answer was not understood: {exc.message}") from exc

    def jobs(self, wanted: list[str]) -> list[dict[str, Any]]:
        """The jobs to migrate as the source reports them, oldest first: those named (each must have
        succeeded), or every job that succeeded."""
        if wanted:
            found = []
            for job_id in dict.fromkeys(wanted):
                with self._calls(f"Job {job_id}"):
                    try:
                        job = self._client.fine_tuning.jobs.retrieve(job_id)
                    except openai.NotFoundError as exc:
                        raise MigrationFailed(
                            f"Job {job_id}: the source {self.url} has no such job ({_message(exc)}). "
                            "List its jobs with `openai api fine_tuning.jobs.list` or drop --job."
                        ) from exc
                if job.status != "succeeded":
                    raise MigrationFailed(
                        f"Job {job_id} has status '{job.status}' on the source; only jobs that succeeded have a "
                        "model to carry over. Wait for it, or leave it out of --job."
                    )
                found.append(job.model_dump(mode="json", exclude_unset=True))
        else:
            with self._calls("Listing the source's fine-tuning jobs"):
                found = [
                    job.model_dump(mode="json", exclude_unset=True)
                    for job in self._client.fine_tuning.jobs.list(limit=100)
                    if job.status == "succeeded"
                ]
        return sorted(found, key=lambda job: (job.get("created_at") or 0, job["id"]))

    def file_info(self, file_id: str, job_id: str, role: str) -> SourceFile:
        with self._calls(f"Job {job_id}: reading its {role} {file_id}"):
            info = self._client.files.retrieve(file_id)
        return SourceFile(file_id, info.filename, info.bytes)

    def file_bytes(self, file: SourceFile, job_id: str, role: str) -> bytes:
        """The file's content: downloaded, or — where the source will not hand it out — the file of
        the same name in `files_dir`."""
        doing = f"Job {job_id}: downloading its {role} {file.id} ({file.filename})"
        with self._calls(doing):
            try:
                return self._client.files.content(file.id).read()
            except (openai.BadRequestError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                refusal = _message(exc)
        return self._local_copy(file, job_id, role, refusal)

    def _local_copy(self, file: SourceFile, job_id: str, role: str, refusal: str) -> bytes:
        said = f"Job {job_id}: the source does not hand out its {role} {file.id} ({refusal})"
        if self.files_dir is None:
            raise MigrationFailed(f"{said}. Put the original {file.filename} in a folder and pass --files-dir FOLDER.")
        local = self.files_dir / file.filename
        if not local.is_file():
            raise MigrationFailed(
                f"{said}, and {self.files_dir} has no {file.filename}. Put the original there, or pass the "
                "folder that holds it as --files-dir."
            )
        content = local.read_bytes()
        if file.bytes is not None and len(content) != file.bytes:
            raise MigrationFailed(
                f"{said}, and {local} is {len(content)} bytes where the source's file is {file.bytes}: it is "
                f"not the file the job trained on. Put the original {file.filename} in --files-dir."
            )
        return content

    def checkpoints(self, job_id: str) -> dict[int, str]:
        """The job's checkpoints' model ids by step; none when the source keeps none (or lists none)."""
        with self._calls(f"Job {job_id}: listing its checkpoints"):
            try:
                page = self._client.fine_tuning.jobs.checkpoints.list(job_id, limit=100)
            except (openai.NotFoundError, openai.BadRequestError):
                return {}
            return {c.step_number: c.fine_tuned_model_checkpoint for c in page}

    def answer(self, model: str, prompt: str | list[dict[str, Any]], max_tokens: int, job_id: str) -> str:
        """`model`'s greedy answer: a chat completion for messages, a completion for a raw prompt
        (legacy prompt/completion data). ModelGone when the source no longer serves the model;
        PromptRefused when it will not take this prompt (a tool message without its call, say)."""
        with self._calls(f"Job {job_id}: asking {model} for its answers"):
            try:
                if isinstance(prompt, str):
                    completion = self._client.completions.create(
                        model=model, prompt=prompt, temperature=0, max_tokens=max_tokens
                    )
                    return completion.choices[0].text if completion.choices else ""
                chat = self._client.chat.completions.create(
                    model=model,
                    messages=prompt,  # type: ignore[arg-type]  # plain role/content dicts, not the SDK's TypedDicts
                    temperature=0,
                    max_tokens=max_tokens,
                )
            except openai.NotFoundError as exc:
                raise ModelGone(_message(exc)) from exc
            except openai.BadRequestError as exc:
                raise PromptRefused(_message(exc)) from exc
            return (chat.choices[0].message.content or "") if chat.choices else ""


class ModelGone(Exception):
    """The source no longer serves the fine-tuned model (its base retired): there is nothing to record."""


class PromptRefused(Exception):
    """The source refused one golden prompt (400): that prompt is left out of the golden set."""
