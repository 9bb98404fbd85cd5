"""`tunehouse files …`: upload training files and list what the server holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer
from openai import OpenAI
from openai.types import FileObject, FilePurpose
from rich.table import Table

from tunehouse.cli.client import (
    DEFAULT_BASE_URL,
    ApiKey,
    AsJson,
    BaseUrl,
    api_errors,
    console,
    fail,
    human_bytes,
    make_client,
    print_json,
    when,
)

files_app = typer.Typer(help="Upload and list files on a tunehouse server.", no_args_is_help=True)


def upload_file(client: OpenAI, path: Path, purpose: str = "fine-tune", reuse: bool = True) -> tuple[FileObject, bool]:
    """Upload `path`, or reuse a file already there with the same name, size and purpose (as the
    0.x OpenAI CLI did), so re-running a command does not pile up copies. Returns the file and
    whether it was reused."""
    if not path.is_file():
        fail(f"No such file: {path}")
    size = path.stat().st_size
    if reuse:
        for existing in client.files.list(purpose=purpose):
            if existing.filename == path.name and existing.bytes == size and existing.status != "error":
                return existing, True
    with open(path, "rb") as f:
        # the SDK types `purpose` as OpenAI's list; a tunehouse server names the unknown ones itself
        return client.files.create(file=f, purpose=cast(FilePurpose, purpose)), False


@files_app.command("upload")
def upload(
    path: Annotated[Path, typer.Argument(help="A local .jsonl file.")],
    purpose: Annotated[str, typer.Option("--purpose", "-p", help="fine-tune, batch, ...")] = "fine-tune",
    reuse: Annotated[
        bool, typer.Option("--reuse/--no-reuse", help="Reuse an identical file (same name, size, purpose).")
    ] = False,
    as_json: AsJson = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Upload a file; prints its id."""
    with api_errors():
        file, reused = upload_file(make_client(base_url, api_key), path, purpose, reuse)
    if as_json:
        print_json(file)
    else:
        verb = "Reusing" if reused else "Uploaded"
        console.print(f"{verb} {file.filename} ({human_bytes(file.bytes)}, {file.purpose}): {file.id}")


@files_app.command("list")
def list_files(
    purpose: Annotated[str | None, typer.Option("--purpose", "-p", help="Only files with this purpose.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-l", help="At most this many, newest first.")] = 100,
    as_json: AsJson = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """List files, newest first."""
    with api_errors():
        client = make_client(base_url, api_key)
        page = client.files.list(purpose=purpose, limit=limit) if purpose else client.files.list(limit=limit)
        files = page.data[:limit]
    if as_json:
        print_json([f.model_dump(mode="json") for f in files])
        return
    table = Table("id", "filename", "purpose", "bytes", "created", "status")
    table.columns[0].overflow = "fold"
    for f in files:
        table.add_row(f.id, f.filename, f.purpose, human_bytes(f.bytes), when(f.created_at), f.status)
    console.print(table)
