"""The store after faults and stops: no leftover temporaries, a whole database file, consistent
backups, a full disk and a lost blob answered with their own errors, safe file names."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_ID, Server, make_home, running_server
from tests.support import chat_rows, upload_rows, write_jsonl


def _tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as db:
        return {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}


def _filenames(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        return [row[0] for row in db.execute("select filename from files")]


def test_stale_upload_temporaries_are_removed_at_start_and_the_db_file_is_whole_after_a_stop(
    tmp_path: Path, shipped_model_dir: Path, tiny_model_dir: Path
) -> None:
    home = make_home(tmp_path / "home", shipped_model_dir)
    leftover = home / "blobs" / "files" / "file-killed-midway.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an upload")
    old = time.time() - 2 * 3600
    os.utime(leftover, (old, old))
    dead = subprocess.Popen(["true"])
    dead.wait()  # a writer on this host that is gone: its temporary goes at once, whatever its age
    fresh = leftover.parent / f"file-other.{socket.gethostname().replace('.', '_')}~{dead.pid}.abc123.tmp"
    fresh.write_bytes(b"another half")
    with running_server(home, tiny_model_dir) as server:
        assert not leftover.exists() and not fresh.exists()
        client = server.client()
        upload_rows(client, tmp_path, chat_rows(10))
        backup = tmp_path / "backup" / "live.db"
        made = server.cli("backup", str(backup))
        assert made.returncode == 0, made.stderr
        assert {"files", "jobs", "events"} <= _tables(backup) and _filenames(backup) == ["train.jsonl"]
        assert server.cli("backup", str(backup)).returncode == 1  # never overwrites
    naive = tmp_path / "naive" / "tunehouse.db"  # a copy of the database file alone, after the stop
    naive.parent.mkdir()
    shutil.copy(home / "tunehouse.db", naive)
    assert {"files", "jobs", "events"} <= _tables(naive) and _filenames(naive) == ["train.jsonl"]


def test_a_missing_blob_is_a_404_and_a_filename_keeps_only_its_safe_basename(
    server: Server, client: OpenAI, tmp_path: Path
) -> None:
    content = write_jsonl(tmp_path / "train.jsonl", chat_rows(10)).read_bytes()
    # Written by hand: the SDK (httpx) would percent-encode the NUL in the filename.
    body = (
        b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="../../etc/evil\x00name.jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--B--\r\n"
    )
    response = httpx.post(
        server.base_url + "/files", content=body, headers={"Content-Type": "multipart/form-data; boundary=B"}
    )
    assert response.status_code == 200, response.text
    created = client.files.retrieve(response.json()["id"])
    assert created.filename == "evilname.jsonl"
    (server.home / "blobs" / "files" / created.id).unlink()
    with pytest.raises(openai.NotFoundError) as caught:
        client.files.content(created.id)
    assert caught.value.param == "file_id"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: a real full disk (needs root, as CI and these machines have)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_an_upload_onto_a_full_disk_is_a_507_and_leaves_nothing(
    small_disk: Path, shipped_model_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    home = make_home(small_disk / "home", shipped_model_dir)
    with running_server(home, tiny_model_dir) as server:
        client = server.client()
        rows = chat_rows(10) * 2300  # about 3.5 MB of JSONL: under the upload limit, over the free space
        with pytest.raises(openai.InternalServerError) as caught:
            upload_rows(client, tmp_path, rows)
        assert caught.value.status_code == 507
        assert "not enough disk space" in caught.value.message
        assert not list((home / "blobs").rglob("*.tmp"))
        assert client.files.list().data == []
        assert client.models.retrieve(TINY_ID).id == TINY_ID  # the server goes on
