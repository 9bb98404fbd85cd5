"""Shared fixtures: a temporary TUNEHOUSE_HOME, a tiny random Llama, and a real server process.

Integration tests talk to a real `tunehouse serve` subprocess through the official `openai` SDK,
exactly as the seed tutorials do. The shipped model is dequantized once into `.cache/` at the repo
root and linked into each test home, so only the first run on a machine pays for it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests import postgres

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
SHIPPED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHIPPED_FOLDER = "HuggingFaceTB--SmolLM2-135M-Instruct"
TINY_ID = "tiny-llama"
MAX_FILE_BYTES = 4 * 1024 * 1024  # the test server's upload limit (OpenAI's is 512 MB)


@pytest.fixture(scope="session")
def shipped_model_dir() -> Path:
    from tunehouse.models.shipped import materialize_shipped_model

    return materialize_shipped_model(CACHE / "models" / SHIPPED_FOLDER)


@pytest.fixture(scope="session")
def tiny_model_dir(shipped_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template: trains in seconds."""
    from tunehouse.models.random_init import build_random_llama

    return build_random_llama("tiny", shipped_model_dir, tmp_path_factory.mktemp("tiny-llama"))


def make_home(root: Path, shipped_model_dir: Path) -> Path:
    """A fresh TUNEHOUSE_HOME whose shipped model is the already dequantized cache."""
    (root / "models").mkdir(parents=True, exist_ok=True)
    link = root / "models" / SHIPPED_FOLDER
    if not link.exists():
        link.symlink_to(shipped_model_dir, target_is_directory=True)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `tunehouse serve` child process on a free loopback port."""

    def __init__(self, home: Path, api_key: str | None = None) -> None:
        self.home = home
        self.api_key = api_key
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.env = {
            **os.environ,
            "TUNEHOUSE_HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            "TUNEHOUSE_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
        }
        self.env.pop("TUNEHOUSE_API_KEY", None)
        if postgres.wanted():  # TUNEHOUSE_TEST_DB=postgresql: this home's store is a database of its own
            self.env["TUNEHOUSE_DATABASE_URL"] = postgres.cluster().database_for(str(home))
        self.log = home / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tunehouse.cli.main", *args], env=self.env, capture_output=True, text=True
        )

    def start(self) -> Server:
        args = ["serve", "--port", str(self.port)]
        if self.api_key:
            args += ["--api-key", self.api_key]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tunehouse.cli.main", *args], env=self.env, stdout=log, stderr=log
            )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def client(self, api_key: str | None = None) -> OpenAI:
        return OpenAI(base_url=self.base_url, api_key=api_key or self.api_key or "sk-local", max_retries=0)


@contextmanager
def running_server(
    home: Path, tiny_model_dir: Path, *, api_key: str | None = None, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A started server on `home` with the tiny model registered; stopped when the block ends."""
    srv = Server(home, api_key=api_key)
    srv.env.update(env or {})
    added = srv.cli("models", "add", TINY_ID, str(tiny_model_dir))
    assert added.returncode == 0, added.stderr
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres.Cluster]:
    """A real PostgreSQL server (tests/postgres.py), started once per session and stopped at its end."""
    try:
        cluster = postgres.cluster()
    except postgres.Unavailable as exc:  # CI runs as root and installs it; a developer may not be able to
        pytest.skip(str(exc))
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: postgres.Cluster, request: pytest.FixtureRequest) -> str:
    """A SQLAlchemy URL (`postgresql+psycopg://…`) of a new, empty database for this test alone (~40 ms)."""
    return postgres_cluster.database_for(request.node.nodeid)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, shipped_model_dir: Path, tiny_model_dir: Path) -> Iterator[Server]:
    with running_server(make_home(tmp_path_factory.mktemp("home"), shipped_model_dir), tiny_model_dir) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server: Server) -> OpenAI:
    return server.client()
