"""Schema migrations (store/migrations): a new store gets every revision, a store made before
migrations existed (commit 37eb0f3) is upgraded in place with its rows, processes opening one store at
once upgrade it once, and the revisions add up to exactly the tables of store/schema.py — on SQLite and
on a real PostgreSQL server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, select, text

from tests.store import schema_37eb0f3 as old
from tunehouse.store import migrations
from tunehouse.store.schema import Base, EventRow, FileRow, JobRow


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty database, on SQLite or on the session's PostgreSQL server, as this process's store."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tunehouse.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEHOUSE_DATABASE_URL", url)
    yield url


def _differences(url: str) -> list[object]:
    """What autogenerate would write for the store at `url`: nothing when the revisions match schema.py."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        engine.dispose()


def _make_old_store(url: str) -> None:
    """A store as the release at 37eb0f3 made it (`create_all`, no alembic_version) with a file, a job
    and its event, written with that release's SQL."""
    engine = create_engine(url)
    old.Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            old.FileRow.__table__.insert(),
            {"id": "file-old1", "filename": "train.jsonl", "bytes": 123, "purpose": "fine-tune", "created_at": 1,
             "status": "processed", "blob": "ab/cd"},
        )  # fmt: skip
        connection.execute(
            old.JobRow.__table__.insert(),
            {"id": "ftjob-old1", "created_at": 2, "model": "tiny-llama", "organization_id": "org-x",
             "training_file": "file-old1", "status": "succeeded", "method": {"type": "supervised"},
             "hyperparameters": {"n_epochs": 1}, "training_options": {}, "seed": 7, "result_files": [],
             "job_metadata": {"team": "a"}},
        )  # fmt: skip
        connection.execute(
            old.EventRow.__table__.insert(),
            {"id": "ftevent-old1", "job_id": "ftjob-old1", "created_at": 3, "level": "info",
             "message": "done", "type": "message"},
        )  # fmt: skip
    engine.dispose()


def test_a_new_store_gets_every_revision_and_matches_the_schema(database_url: str) -> None:
    from tunehouse.store.db import engine, revisions

    engine()
    at, newest = revisions()
    assert at == newest == migrations.heads()
    assert _differences(database_url) == []


def test_a_store_from_before_migrations_is_upgraded_in_place(database_url: str) -> None:
    _make_old_store(database_url)
    from tunehouse.store.db import revisions, session

    assert revisions()[0] == set()  # no alembic_version yet: the release before migrations
    with session() as s:  # the first session opens the store, which upgrades it
        job = s.scalars(select(JobRow).where(JobRow.id == "ftjob-old1")).one()
        assert (job.model, job.seed, job.job_metadata, job.method) == (
            "tiny-llama",
            7,
            {"team": "a"},
            {"type": "supervised"},
        )
        assert s.scalars(select(FileRow.filename)).all() == ["train.jsonl"]
        assert s.scalars(select(EventRow.message).where(EventRow.job_id == "ftjob-old1")).all() == ["done"]
    assert revisions()[0] == migrations.heads()
    assert _differences(database_url) == []  # the new revisions' columns and tables are all there


def test_processes_opening_one_new_store_at_once_upgrade_it_once(database_url: str) -> None:
    """The API process and its trainer children open the store together: every one must start, and
    the store must end at the heads with one version row per head (no table made twice)."""
    opener = "from tunehouse.store.db import engine, revisions; engine(); print(sorted(revisions()[0]))"
    processes = [
        subprocess.Popen([sys.executable, "-c", opener], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
        assert out.strip() == str(sorted(migrations.heads()))
    engine = create_engine(database_url)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert sorted(versions) == sorted(migrations.heads())
        assert connection.execute(select(func.count()).select_from(FileRow.__table__)).scalar_one() == 0
    engine.dispose()


def test_db_command_shows_and_applies_revisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite only (the command reads the same store either way; each run imports the whole CLI)."""
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.delenv("TUNEHOUSE_DATABASE_URL", raising=False)

    def tunehouse(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "tunehouse.cli.main", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    heads = ", ".join(sorted(migrations.heads()))
    assert "Store at: none" in tunehouse("db", "current")
    assert f"Store at: {heads}" in tunehouse("db", "upgrade")
    shown = tunehouse("db", "current")
    assert f"Store at: {heads}" in shown and "run `tunehouse db upgrade`" not in shown
