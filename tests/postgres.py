"""A real PostgreSQL server for the tests: Debian's `postgresql` binaries, a throwaway cluster in a temp
dir, started on a free loopback port and stopped when the test session ends.

`TUNEHOUSE_TEST_DB=postgresql` makes every test server (tests/conftest.py `Server`) keep its store in
a database of its own on this cluster; `postgres_url` (tests/conftest.py) hands a test a new database.
When the binaries are missing they are installed with apt-get (CI runs as root on a clean machine).
PostgreSQL refuses to run as root, so as root the cluster belongs to, and runs as, the `postgres` user.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import psycopg
from psycopg import sql

SUPERUSER = "tunehouse"
TEST_DB_VARIABLE = "TUNEHOUSE_TEST_DB"


class Unavailable(RuntimeError):
    """PostgreSQL's server is not installed and this process cannot install it (not root, no apt-get)."""


def wanted() -> bool:
    """Whether this test run keeps the test servers' stores on PostgreSQL rather than SQLite."""
    return os.environ.get(TEST_DB_VARIABLE, "sqlite").lower() in ("postgresql", "postgres", "pg")


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def install_binaries() -> Path:
    """The folder of `initdb`, `pg_ctl` and `postgres`; installs Debian's `postgresql` when absent."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise Unavailable("PostgreSQL's server is not installed: apt-get install postgresql (as root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True, env=env, capture_output=True)
        bin_dir = _bin_dir()
        assert bin_dir is not None, "apt-get installed postgresql, yet no /usr/lib/postgresql/*/bin/initdb"
    return bin_dir


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One PostgreSQL server: its data in a temp dir, listening on 127.0.0.1:`port`, trusting local logins."""

    def __init__(self) -> None:
        self.bin = install_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="tunehouse-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.log = self.root / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._databases: dict[str, str] = {}
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-sync", "-N")
        # A test cluster: durability traded for speed (nothing here outlives the session).
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        options += " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options)
        self.running = True

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(self.bin / tool), *args], capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}{log}")

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database `name`; its SQLAlchemy URL."""
        with psycopg.connect(self.url("postgres", "postgresql"), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def database_for(self, key: str) -> str:
        """The database kept for `key` (a test server's home): created on first use, the same one after."""
        if key not in self._databases:
            name = "th_" + hashlib.sha256(key.encode()).hexdigest()[:16]
            self._databases[key] = self.create_database(name)
        return self._databases[key]

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate")
            shutil.rmtree(self.root, ignore_errors=True)


@lru_cache(maxsize=1)
def cluster() -> Cluster:
    """The session's one cluster, started on first use and stopped when the session (process) ends."""
    started = Cluster()
    atexit.register(started.stop)
    return started
