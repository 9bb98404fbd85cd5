"""`tunehouse` — serve the API, manage models, prepare data, drive jobs.

Sub-commands live in their own modules and are mounted here; every user-facing failure is a
TunehouseError, printed as one line without a traceback and exiting 1.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tunehouse.cli.bench import bench_app
from tunehouse.cli.chat import chat
from tunehouse.cli.data import data_app
from tunehouse.cli.db import db_app
from tunehouse.cli.eval import evaluate
from tunehouse.cli.files import files_app
from tunehouse.cli.jobs import jobs_app
from tunehouse.cli.migrate import migrate
from tunehouse.cli.models_export import models_export
from tunehouse.cli.projects import keys_app, projects_app
from tunehouse.cli.webhooks import webhooks_app
from tunehouse.cli.workers import workers
from tunehouse.config import settings
from tunehouse.errors import TunehouseError

app = typer.Typer(help="Self-hosted, OpenAI-compatible fine-tuning.", no_args_is_help=True)
models_app = typer.Typer(help="The model catalog.", no_args_is_help=True)
app.add_typer(models_app, name="models")
models_app.command("export")(models_export)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(db_app, name="db")
# Client commands: talk HTTP to a server (--base-url), like the openai SDK.
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(projects_app, name="projects")
app.add_typer(keys_app, name="keys")
app.command("chat")(chat)
app.command("migrate")(migrate)
app.command("eval")(evaluate)
app.command("workers")(workers)
console = Console()
err_console = Console(stderr=True)


def fail(exc: TunehouseError) -> None:
    err_console.print(f"[red]Error:[/red] {exc.message}")
    raise typer.Exit(1)


SHUTDOWN_GRACE_SECONDS = 10


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="TUNEHOUSE_API_KEY", help="Require this Bearer key on every request."
    ),
    worker: bool = typer.Option(True, "--worker/--no-worker", help="Run a training worker in-process."),
) -> None:
    """Run the OpenAI-compatible API (and, by default, one training worker)."""
    import uvicorn

    if not api_key and not settings().admin_key and not _is_loopback(host):
        err_console.print(
            f"[red]Error:[/red] refusing to bind {host} without an API key: anyone on the network "
            "could use it. Set --api-key or TUNEHOUSE_API_KEY (or TUNEHOUSE_ADMIN_KEY, for projects' keys), "
            "or bind 127.0.0.1."
        )
        raise typer.Exit(2)
    if api_key:
        os.environ["TUNEHOUSE_API_KEY"] = api_key
    from tunehouse.api.app import create_app

    try:
        application = create_app(run_worker=worker)
    except TunehouseError as exc:  # e.g. TUNEHOUSE_SERVE_BACKEND=vllm without vLLM installed
        fail(exc)
    # On SIGTERM, requests in flight get SHUTDOWN_GRACE_SECONDS to finish; then the server stops anyway.
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )


@app.command()
def backup(target: Path = typer.Argument(..., help="The new file to write the copy to.")) -> None:
    """Copy the store's database to TARGET, consistently, while the server runs (SQLite)."""
    from tunehouse.store.db import backup as backup_store

    try:
        backup_store(target)
    except TunehouseError as exc:
        fail(exc)
    console.print(f"Backed up the store to {target}")


@app.command()
def worker() -> None:
    """Run a training worker without the API: workers on several machines share one database
    (TUNEHOUSE_DATABASE_URL) and one blob root (TUNEHOUSE_BLOB_URL). SIGTERM or Ctrl-C stops it
    cleanly: its job goes back to the queue, to resume from its last checkpoint."""
    import signal
    import threading

    from tunehouse.jobs.worker import run_worker_forever

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_worker_forever(stop)


@models_app.command("add")
def models_add(
    model_id: str = typer.Argument(..., help="The id to serve it under, e.g. my-org/my-model."),
    path: Path = typer.Argument(..., help="A local Hugging Face model folder."),
) -> None:
    """Register a local Hugging Face model folder as a base model."""
    from tunehouse.models.catalog import register_base_model

    try:
        model = register_base_model(model_id, path)
    except TunehouseError as exc:
        fail(exc)
    console.print(f"Registered base model [bold]{model.id}[/bold] from {model.path}")


@models_app.command("list")
def models_list() -> None:
    """List base and fine-tuned models."""
    from tunehouse.models.catalog import list_models

    table = Table("id", "kind", "owned_by", "path")
    for model in list_models():
        table.add_row(model.id, model.kind, model.owned_by, str(model.path))
    console.print(table)


@models_app.command("alias")
def models_alias(
    name: str = typer.Argument(..., help="The name clients may call, e.g. gpt-4o-mini."),
    target: str = typer.Argument(..., help="The model it stands for: a base, a fine-tune or another alias."),
) -> None:
    """Make NAME stand for TARGET everywhere a model id is accepted (jobs, chat, completions, evals)."""
    from tunehouse.models.catalog import alias_model

    try:
        alias = alias_model(name, target)
    except TunehouseError as exc:
        fail(exc)
    console.print(f"[bold]{alias.name}[/bold] now stands for {alias.target}")


@models_app.command("unalias")
def models_unalias(name: str = typer.Argument(..., help="An alias made with `tunehouse models alias`.")) -> None:
    """Remove an alias made with `tunehouse models alias` (shipped ones can be pointed elsewhere)."""
    from tunehouse.models.catalog import unalias

    try:
        unalias(name)
    except TunehouseError as exc:
        fail(exc)
    console.print(f"Removed the alias {name}")


@models_app.command("aliases")
def models_aliases() -> None:
    """List the model aliases in force and where each comes from (store, settings or shipped)."""
    from tunehouse.models.aliases import list_aliases

    table = Table("alias", "model", "source")
    for alias in list_aliases():
        table.add_row(alias.name, alias.target, alias.source)
    console.print(table)


if __name__ == "__main__":
    app()
