"""A job's integrations send data only where the operator allows, and stay small."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_ID
from tests.support import chat_rows, upload_rows
from tunehouse.errors import InvalidRequest
from tunehouse.jobs.integrations import check_endpoint, check_integrations

PARAM = "integrations[0].mlflow.tracking_uri"


@pytest.mark.parametrize(
    "uri",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://127.0.0.1:5000",
        "http://localhost:8080",
        "http://10.0.0.5:5000",
        "https://mlflow.example.com",  # a public name, but not allowed by the operator
    ],
)
def test_a_jobs_tracking_server_is_refused_by_default(client: OpenAI, tmp_path: Path, uri: str) -> None:
    train = upload_rows(client, tmp_path, chat_rows(10))
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(
            model=TINY_ID,
            training_file=train,
            integrations=[{"type": "mlflow", "mlflow": {"tracking_uri": uri}}],  # type: ignore[list-item]  # the SDK knows W&B only
        )
    assert caught.value.param == PARAM


def test_an_oversized_integrations_object_is_refused(client: OpenAI, tmp_path: Path) -> None:
    train = upload_rows(client, tmp_path, chat_rows(10))
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(
            model=TINY_ID,
            training_file=train,
            integrations=[{"type": "wandb", "wandb": {"project": "p", "tags": ["x" * 60] * 90_000}}],
        )
    assert (caught.value.param or "").startswith("integrations[0]")


def test_allowed_names_must_not_resolve_to_private_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEHOUSE_ALLOWED_OUTBOUND", "localhost, *.example.com")
    with pytest.raises(InvalidRequest, match="non-public address"):
        check_endpoint("http://localhost:5000", PARAM)  # allowed by name, but it is loopback
    with pytest.raises(InvalidRequest, match="not in TUNEHOUSE_ALLOWED_OUTBOUND"):
        check_endpoint("http://127.0.0.1:5000", PARAM)  # an address needs an address entry
    with pytest.raises(InvalidRequest, match="not in TUNEHOUSE_ALLOWED_OUTBOUND"):
        check_endpoint("http://evil.test", PARAM)


def test_addresses_and_networks_the_operator_names_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEHOUSE_ALLOWED_OUTBOUND", "localhost,127.0.0.0/8,10.1.2.3")
    check_endpoint("http://localhost:5000", PARAM)
    check_endpoint("http://127.0.0.1:5000/api", PARAM)
    check_endpoint("https://10.1.2.3", PARAM)
    with pytest.raises(InvalidRequest):
        check_endpoint("http://10.1.2.4", PARAM)
    with pytest.raises(InvalidRequest, match="http"):
        check_endpoint("file:///etc/passwd", PARAM)


def test_webhooks_may_name_public_hosts_but_private_ones_need_an_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNEHOUSE_ALLOWED_OUTBOUND", raising=False)
    assert check_endpoint("https://8.8.8.8/hooks", PARAM, public_hosts=True) == [ipaddress.ip_address("8.8.8.8")]
    with pytest.raises(InvalidRequest, match="loopback and private addresses need an entry"):
        check_endpoint("http://127.0.0.1/hooks", PARAM, public_hosts=True)
    with pytest.raises(InvalidRequest, match="non-public address"):
        check_endpoint("http://localhost/hooks", PARAM, public_hosts=True)
    with pytest.raises(InvalidRequest, match="only to the tracking server"):
        check_endpoint("https://8.8.8.8/hooks", PARAM)  # a job's tracking server still needs the operator


def test_integration_settings_are_checked() -> None:
    with pytest.raises(InvalidRequest, match="Unknown wandb settings: base_url"):
        check_integrations([{"type": "wandb", "wandb": {"project": "p", "base_url": "http://10.0.0.1"}}])
    with pytest.raises(InvalidRequest, match="wandb.project is required"):
        check_integrations([{"type": "wandb", "wandb": {}}])
    with pytest.raises(InvalidRequest, match="At most 5"):
        check_integrations([{"type": "wandb", "wandb": {"project": "p"}}] * 6)
