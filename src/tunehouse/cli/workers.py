"""`tunehouse workers`: the training workers sharing a server's store, from its
`/v1/organization/workers` (the admin key where the server has one)."""

from __future__ import annotations

from typing import Any

from tunehouse.cli.client import (
    DEFAULT_BASE_URL,
    ApiKey,
    AsJson,
    BaseUrl,
    api_errors,
    console,
    make_client,
    print_json,
    when,
)


def workers(as_json: AsJson = False, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> None:
    """List the workers: host, device and GPUs, last heartbeat, current job and status."""
    from rich.table import Table

    with api_errors():
        listing: Any = make_client(base_url, api_key).get("/organization/workers", cast_to=object)
    rows = listing["data"]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "host", "device", "gpus", "last heartbeat", "current job", "status")
    for worker in rows:
        gpus = str(worker["gpus"])
        if worker["gpu_memory_mb"]:
            gpus += f" × {worker['gpu_memory_mb'] / 1024:.0f} GiB"
        table.add_row(
            worker["id"],
            f"{worker['host']} (pid {worker['pid']})",
            worker["device"],
            gpus,
            when(int(worker["last_heartbeat_at"])),
            worker["current_job"] or "-",
            worker["status"],
        )
    console.print(table)
