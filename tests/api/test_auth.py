"""With an API key set, every request needs it; without one, the server binds only loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import Server, make_home


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path) -> Iterator[Server]:
    server = Server(make_home(tmp_path_factory.mktemp("locked"), shipped_model_dir), api_key="sk-secret-123456")
    server.start()
    yield server
    server.stop()


def test_right_key_is_accepted(locked_server: Server) -> None:
    assert locked_server.client("sk-secret-123456").models.list().data


def test_wrong_or_missing_key_is_401(locked_server: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        locked_server.client("sk-wrong-key-000000").models.list()
    assert err.value.code == "invalid_api_key"
    assert "sk-secret" not in err.value.message
    import httpx

    response = httpx.get(f"{locked_server.base_url}/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_no_key_refuses_a_public_bind(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tunehouse.cli.main", "serve", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        env={"TUNEHOUSE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to bind 0.0.0.0 without an API key" in result.stderr
