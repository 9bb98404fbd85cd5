"""`tunehouse projects …` and `tunehouse keys …`: projects and their API keys, through a server's admin
API (`/v1/organization/projects`, the official SDK's `client.admin.organization.projects`) with the
admin key (`--admin-key` or TUNEHOUSE_ADMIN_KEY)."""

from __future__ import annotations

from typing import Annotated

import typer
from openai import OpenAI
from openai.resources.admin.organization.projects.projects import Projects
from rich.table import Table

from tunehouse.cli.client import (
    DEFAULT_BASE_URL,
    AsJson,
    BaseUrl,
    api_errors,
    console,
    err_console,
    fail,
    print_json,
    when,
)

projects_app = typer.Typer(help="Projects: each sees only its own files, jobs and models.", no_args_is_help=True)
keys_app = typer.Typer(help="A project's API keys (each the key of a service account).", no_args_is_help=True)

AdminKey = Annotated[
    str | None,
    typer.Option("--admin-key", envvar="TUNEHOUSE_ADMIN_KEY", help="The server's admin key.", show_default=False),
]
ProjectId = Annotated[str, typer.Argument(help="The project id, proj_… (proj_default: the default project).")]


def _projects(base_url: str, admin_key: str | None) -> Projects:
    # The SDK sends `admin_api_key` on admin routes; the plain key it also insists on is never sent there.
    client = OpenAI(base_url=base_url, api_key="sk-unused", admin_api_key=admin_key or "sk-no-admin-key", max_retries=2)
    return client.admin.organization.projects


@projects_app.command("create")
def create_project(
    name: Annotated[str, typer.Argument(help="The project's name; fine-tuned models carry it as `{org}`.")],
    as_json: AsJson = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    admin_key: AdminKey = None,
) -> None:
    """Create a project; give it a key with `tunehouse keys create PROJECT_ID`."""
    with api_errors():
        project = _projects(base_url, admin_key).create(name=name)
    if as_json:
        print_json(project)
        return
    console.print(f"Created project {project.id} ({project.name})", markup=False)


@projects_app.command("list")
def list_projects(
    archived: Annotated[bool, typer.Option("--archived", help="Include archived projects.")] = False,
    as_json: AsJson = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    admin_key: AdminKey = None,
) -> None:
    """List the projects, oldest first (the default project first of all)."""
    with api_errors():
        projects = list(_projects(base_url, admin_key).list(include_archived=archived))
    if as_json:
        print_json([p.model_dump(mode="json") for p in projects])
        return
    table = Table("id", "name", "status", "created")
    for project in projects:
        table.add_row(project.id, project.name, project.status, when(project.created_at))
    console.print(table)


@projects_app.command("archive")
def archive_project(project_id: ProjectId, base_url: BaseUrl = DEFAULT_BASE_URL, admin_key: AdminKey = None) -> None:
    """Archive a project: its keys stop working at once; its objects stay."""
    with api_errors():
        _projects(base_url, admin_key).archive(project_id)
    console.print(f"Archived project {project_id}", markup=False)


@keys_app.command("create")
def create_key(
    project_id: ProjectId,
    name: Annotated[str, typer.Option("--name", "-n", help="The service account's name.")] = "tunehouse CLI",
    as_json: AsJson = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    admin_key: AdminKey = None,
) -> None:
    """Make a key for a project (a service account's); prints the key, which is shown only this once."""
    with api_errors():
        account = _projects(base_url, admin_key).service_accounts.create(project_id, name=name)
    if account.api_key is None:  # a server that made the account alone
        fail(f"The server made service account {account.id} without a key.")
    if as_json:
        print_json(account)
        return
    console.print(f"Created key {account.api_key.id} for {name} in {project_id}", markup=False)
    err_console.print("API key (shown only now; keep it somewhere safe):", markup=False)
    console.print(account.api_key.value, markup=False)


@keys_app.command("list")
def list_keys(
    project_id: ProjectId, as_json: AsJson = False, base_url: BaseUrl = DEFAULT_BASE_URL, admin_key: AdminKey = None
) -> None:
    """List a project's keys, redacted."""
    with api_errors():
        keys = list(_projects(base_url, admin_key).api_keys.list(project_id))
    if as_json:
        print_json([k.model_dump(mode="json") for k in keys])
        return
    table = Table("id", "key", "owner", "created", "last used")
    for key in keys:
        owner = key.owner.service_account.name if key.owner.service_account else "-"
        table.add_row(key.id, key.redacted_value, owner, when(key.created_at), when(key.last_used_at))
    console.print(table)


@keys_app.command("delete")
def delete_key(
    project_id: ProjectId,
    key_id: Annotated[str, typer.Argument(help="The key's id, key_…")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    admin_key: AdminKey = None,
) -> None:
    """Delete a key: it is refused from the next request on."""
    with api_errors():
        _projects(base_url, admin_key).api_keys.delete(key_id, project_id=project_id)
    console.print(f"Deleted key {key_id}", markup=False)
