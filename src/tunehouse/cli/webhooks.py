"""`tunehouse webhooks …`: add, list and remove the endpoints a server notifies, and see its deliveries."""

from __future__ import annotations

from typing import Annotated, Any, cast

import typer
from rich.table import Table

from tunehouse.cli.client import (
    DEFAULT_BASE_URL,
    ApiKey,
    AsJson,
    BaseUrl,
    api_errors,
    console,
    err_console,
    make_client,
    print_json,
    when,
)

webhooks_app = typer.Typer(help="Webhook endpoints a tunehouse server notifies when jobs end.", no_args_is_help=True)

JOB_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]
EndpointId = Annotated[str, typer.Argument(help="The endpoint id, we_…")]


@webhooks_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="The http(s) URL that receives the events.")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="A name for it (default: the URL).")] = None,
    event: Annotated[
        list[str], typer.Option("--event", "-e", help="An event type, repeatable (default: every job event).")
    ] = [],  # noqa: B006
    as_json: AsJson = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Add an endpoint; prints its signing secret, which is shown only this once."""
    with api_errors():
        endpoint = make_client(base_url, api_key).webhooks.create(
            name=name or url, url=url, event_types=cast(Any, event or JOB_EVENTS)
        )
    if as_json:
        print_json(endpoint.model_dump() | {"signing_secret": endpoint.signing_secret})
        return
    console.print(f"Added webhook endpoint {endpoint.id} for {', '.join(endpoint.event_types)}", markup=False)
    err_console.print("Signing secret (shown only now; verify deliveries with it):", markup=False)
    console.print(endpoint.signing_secret, markup=False)


@webhooks_app.command("list")
def list_endpoints(as_json: AsJson = False, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """List the server's webhook endpoints, newest first."""
    with api_errors():
        endpoints = list(make_client(base_url, api_key).webhooks.list())
    if as_json:
        print_json([e.model_dump(mode="json") for e in endpoints])
        return
    table = Table("id", "name", "url", "events", "created")
    for endpoint in endpoints:
        table.add_row(
            endpoint.id, endpoint.name, endpoint.url, ", ".join(endpoint.event_types), when(endpoint.created_at)
        )
    console.print(table)


@webhooks_app.command("rm")
def remove(endpoint_id: EndpointId, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """Remove an endpoint; events not yet delivered to it are dropped."""
    with api_errors():
        make_client(base_url, api_key).webhooks.delete(endpoint_id)
    console.print(f"Removed webhook endpoint {endpoint_id}", markup=False)


@webhooks_app.command("deliveries")
def deliveries(
    endpoint_id: EndpointId,
    limit: Annotated[int, typer.Option("--limit", "-l", help="The latest this many.")] = 20,
    as_json: AsJson = False,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """The events sent to an endpoint, newest first: status, attempts and the last answer or error."""
    with api_errors():
        page = make_client(base_url, api_key).get(
            f"/webhook_endpoints/{endpoint_id}/deliveries",
            cast_to=cast(Any, dict),
            options={"params": {"limit": limit}},
        )
    found: list[dict[str, Any]] = page["data"]
    if as_json:
        print_json(found)
        return
    table = Table("event", "type", "about", "status", "attempts", "last answer")
    for delivery in found:
        last = delivery["attempts"][-1] if delivery["attempts"] else None
        answer = (
            "-" if last is None else (str(last["response_status_code"] or "") + " " + (last["error"] or "")).strip()
        )
        table.add_row(
            delivery["event_id"],
            delivery["event_type"],
            delivery["data"].get("id", ""),
            delivery["status"],
            str(len(delivery["attempts"])),
            answer,
        )
    console.print(table)
