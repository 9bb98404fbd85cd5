"""A job's `integrations`: their shape and size, and where they may send data.

A job's MLflow `tracking_uri` makes the trainer send the job's config, metrics, result file and
adapter to that address. Left open, any user of the API could point it at cloud metadata, a loopback
port or another host on the server's network (SSRF) and read the answers back through the job's
events. So an endpoint chosen per job is refused unless the operator allows it in
TUNEHOUSE_ALLOWED_OUTBOUND (empty by default: only the server-wide TUNEHOUSE_MLFLOW_TRACKING_URI is
used); loopback, link-local and private addresses need an entry that names them (an address or a
network), not only a host name that resolves there. The check runs at job creation and again before
the trainer connects, so a name that changes its address in between (DNS rebinding) is caught.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from tunehouse.config import settings
from tunehouse.errors import InvalidRequest

MAX_INTEGRATIONS = 5
MAX_INTEGRATION_BYTES = 4096
MAX_TEXT = 256
MAX_TAGS = 50
MAX_TAG = 64
FIELDS = {
    "wandb": {"project", "name", "entity", "tags"},
    "mlflow": {"tracking_uri", "experiment_name", "run_name", "tags"},
}
"""The settings each integration type takes (W&B's are OpenAI's; MLflow is tunehouse's own)."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def check_integrations(integrations: list[Any]) -> None:
    """Reject a malformed, oversized or not-allowed `integrations` list at job creation (a 400)."""
    if len(integrations) > MAX_INTEGRATIONS:
        raise InvalidRequest(f"At most {MAX_INTEGRATIONS} integrations.", param="integrations")
    for index, integration in enumerate(integrations):
        param = f"integrations[{index}]"
        kind = integration.get("type") if isinstance(integration, dict) else None
        if kind not in FIELDS or not isinstance(integration.get(kind), dict):
            raise InvalidRequest(
                f"{param} must be {{'type': 'wandb', 'wandb': {{'project': ...}}}} "
                f"or {{'type': 'mlflow', 'mlflow': {{...}}}}.",
                param=param,
            )
        if len(json.dumps(integration)) > MAX_INTEGRATION_BYTES:
            raise InvalidRequest(f"{param} is larger than {MAX_INTEGRATION_BYTES} bytes.", param=param)
        options: dict[str, Any] = integration[kind]
        _check_options(kind, options, f"{param}.{kind}")
        if kind == "mlflow" and options.get("tracking_uri") is not None:
            check_endpoint(options["tracking_uri"], f"{param}.mlflow.tracking_uri")


def _check_options(kind: str, options: dict[str, Any], param: str) -> None:
    unknown = set(options) - FIELDS[kind]
    if unknown:
        known = ", ".join(sorted(FIELDS[kind]))
        raise InvalidRequest(f"Unknown {kind} settings: {', '.join(sorted(unknown))} (known: {known}).", param=param)
    if kind == "wandb" and not options.get("project"):
        raise InvalidRequest("wandb.project is required.", param=f"{param}.project")
    for key, value in options.items():
        if key == "tags":
            _check_tags(value, f"{param}.tags")
        elif value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
            raise InvalidRequest(
                f"{param}.{key} must be a string of at most {MAX_TEXT} characters.", param=f"{param}.{key}"
            )


def _check_tags(tags: Any, param: str) -> None:
    if tags is None:
        return
    values = [*tags, *tags.values()] if isinstance(tags, dict) else tags
    if (
        not isinstance(values, list)
        or len(values) > 2 * MAX_TAGS
        or not all(isinstance(tag, str) and len(tag) <= MAX_TAG for tag in values)
    ):
        raise InvalidRequest(f"{param}: at most {MAX_TAGS} tags, each a string of at most {MAX_TAG}.", param=param)


def check_endpoint(url: Any, param: str, *, public_hosts: bool = False) -> list[Address]:
    """Refuse an outbound URL chosen by a user unless TUNEHOUSE_ALLOWED_OUTBOUND allows its host
    and every address it resolves to (see the module's docstring). With `public_hosts` (webhooks),
    a host whose every address is public needs no entry; loopback and private ones still do.
    Returns the addresses checked: connect to one of them, not to a fresh lookup of the name."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"{param} must be an http(s):// URL.", param=param)
    host = parts.hostname
    names, networks = _allowlist()
    if not public_hosts and not names and not networks:
        raise InvalidRequest(
            f"{param}: this server sends tracking data only to the tracking server its operator set "
            "(TUNEHOUSE_MLFLOW_TRACKING_URI); other endpoints must be allowed in TUNEHOUSE_ALLOWED_OUTBOUND.",
            param=param,
        )
    literal = _address(host)
    listed = public_hosts or any(fnmatch.fnmatchcase(host.lower(), name) for name in names)
    if literal is None and not listed:
        raise InvalidRequest(f"{param}: the host {host} is not in TUNEHOUSE_ALLOWED_OUTBOUND.", param=param)
    addresses = [literal] if literal is not None else _resolve(host, param)
    for address in addresses:
        in_network = any(address in network for network in networks)
        if literal is not None and not in_network and not (public_hosts and address.is_global):
            raise InvalidRequest(
                f"{param}: the address {address} is not in TUNEHOUSE_ALLOWED_OUTBOUND"
                f"{'' if address.is_global else ' (loopback and private addresses need an entry)'}.",
                param=param,
            )
        if not address.is_global and not in_network:
            raise InvalidRequest(
                f"{param}: {host} resolves to the non-public address {address}; allow it by address or "
                "network in TUNEHOUSE_ALLOWED_OUTBOUND.",
                param=param,
            )
    return addresses


def _allowlist() -> tuple[list[str], list[Network]]:
    """TUNEHOUSE_ALLOWED_OUTBOUND's entries: host names (`*.example.com` allowed) and networks."""
    names: list[str] = []
    networks: list[Network] = []
    for entry in settings().allowed_outbound:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.append(entry.lower())
    return names, networks


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, param: str) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise InvalidRequest(f"{param}: the host {host} could not be resolved.", param=param) from exc
    return [ipaddress.ip_address(info[4][0]) for info in infos]
