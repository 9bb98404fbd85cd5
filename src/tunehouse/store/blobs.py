"""Blobs on local disk, written atomically: a temporary file in the same folder, fsync, rename.

A crash mid-upload leaves at most a `.tmp` file, never a half-written blob that the store points at;
`remove_stale_temporaries` clears those at start. A full disk is `InsufficientStorage` (507), with
the partial file removed.

With a shared blob root (`TUNEHOUSE_BLOB_URL`: a folder every machine mounts, or an fsspec URL such
as `s3://bucket/prefix`) the API and workers on other machines see one set of blobs: each blob is
also written there, and a machine that lacks a blob locally fetches it on first use. Blobs never
change once written, so the local copy is a cache that needs no invalidation. Folders (checkpoints,
trained models) are shared the same way, file by file, with the file that marks a folder complete
copied last (`push_tree`, `pull_tree`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tunehouse.config import settings
from tunehouse.errors import InsufficientStorage, NotFound, PayloadTooLarge

STALE_TEMPORARY_SECONDS = 3600
"""A `.tmp` blob this old is no upload in progress, whoever wrote it."""

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _shared_root(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    filesystem, root = fsspec.core.url_to_fs(url)
    return filesystem, root.rstrip("/")


def shared_root() -> tuple[fsspec.AbstractFileSystem, str] | None:
    """The shared blob root's filesystem and path (`TUNEHOUSE_BLOB_URL`); None without one."""
    url = settings().blob_url
    return _shared_root(url) if url else None


def _local(key: str) -> Path:
    return settings().blobs_dir / key


def _fetch(filesystem: fsspec.AbstractFileSystem, remote: str, target: Path) -> None:
    """Copy one shared file to `target` atomically (a temporary beside it, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{_writer()}.fetch.tmp")
    try:
        filesystem.get_file(remote, str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _publish(filesystem: fsspec.AbstractFileSystem, source: Path, remote: str) -> None:
    """Copy one local file to the shared root, whole or not at all: an object store's put is atomic;
    a shared folder gets a temporary and a rename."""
    if not isinstance(filesystem, LocalFileSystem):
        filesystem.put_file(str(source), remote)
        return
    target = Path(remote)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{_writer()}.publish.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def blob_path(key: str) -> Path:
    """The blob's local path, fetched from the shared root first where this machine lacks it."""
    path = _local(key)
    shared = shared_root()
    if shared is not None and not path.is_file():
        filesystem, root = shared
        if filesystem.exists(f"{root}/{key}"):
            _fetch(filesystem, f"{root}/{key}", path)
    return path


def write_blob(key: str, chunks: Iterable[bytes], max_bytes: int | None = None) -> int:
    """Write `chunks` to the blob `key` (and the shared root); returns its size. Raises
    PayloadTooLarge past `max_bytes`."""
    target = _local(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f"{target.name}.{_writer()}.", suffix=".tmp")
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise PayloadTooLarge(
                        f"File is larger than the {max_bytes:,}-byte limit (TUNEHOUSE_MAX_FILE_BYTES).", param="file"
                    )
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage("The server has not enough disk space to store this file.") from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    shared = shared_root()
    if shared is not None:
        try:
            _publish(shared[0], target, f"{shared[1]}/{key}")
        except BaseException:
            target.unlink(missing_ok=True)  # a blob that other machines cannot read is not stored
            raise
    return size


def existing_blob(key: str, param: str) -> Path:
    """The blob's path; a blob missing from disk (deleted by hand, a lost volume) is a logged 404."""
    path = blob_path(key)
    if not path.is_file():
        log.error("blob %s is missing from %s", key, path)
        raise NotFound("The content of this file is missing from the server's storage.", param=param)
    return path


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def _writer() -> str:
    """`HOST~PID` of this process, in a temporary's name (`KEY.HOST~PID.RANDOM.tmp`): who may
    still be writing it."""
    return f"{_host()}~{os.getpid()}"


def _writer_is_gone(path: Path) -> bool:
    """Whether the process named in a temporary's name is known dead (on this host), or the file
    is older than any upload (a writer on another host sharing the folder)."""
    if path.stat().st_mtime < time.time() - STALE_TEMPORARY_SECONDS:
        return True
    parts = path.name.split(".")
    host, _, pid = parts[-3].partition("~") if len(parts) >= 4 else ("", "", "")
    if host != _host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale_temporaries() -> int:
    """Delete `.tmp` files left by uploads that were killed midway; returns how many."""
    removed = 0
    for path in settings().blobs_dir.rglob("*.tmp"):
        try:
            if _writer_is_gone(path):
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def delete_blob(key: str) -> None:
    _local(key).unlink(missing_ok=True)
    shared = shared_root()
    if shared is not None:
        filesystem, root = shared
        if filesystem.exists(f"{root}/{key}"):
            filesystem.rm_file(f"{root}/{key}")


def push_tree(key: str, folder: Path, last: str | None = None) -> None:
    """Copy every file of the local `folder` to the shared root under `key` (nothing without one).
    The file named `last` goes last, so a reader that sees it sees the whole folder."""
    shared = shared_root()
    if shared is None:
        return
    filesystem, root = shared
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.name == last)
    for path in files:
        _publish(filesystem, path, f"{root}/{key}/{path.relative_to(folder).as_posix()}")


def shared_folders(key: str) -> list[str]:
    """The names of the folders under `key` in the shared root (none without one)."""
    shared = shared_root()
    if shared is None:
        return []
    filesystem, root = shared
    try:
        entries = filesystem.ls(f"{root}/{key}", detail=True)
    except FileNotFoundError:
        return []
    return [Path(entry["name"]).name for entry in entries if entry["type"] == "directory"]


def pull_tree(key: str, folder: Path, last: str | None = None) -> bool:
    """Copy the shared folder `key` into the local `folder` (files it lacks), the file named `last`
    last; whether the shared root has that folder."""
    shared = shared_root()
    if shared is None:
        return False
    filesystem, root = shared
    prefix = f"{root}/{key}"
    found = filesystem.find(prefix)
    for remote in sorted(found, key=lambda name: name.rsplit("/", 1)[-1] == last):
        target = folder / remote.removeprefix(prefix).lstrip("/")
        if not target.is_file():
            _fetch(filesystem, remote, target)
    return bool(found)


def trained_model_key(job_id: str) -> str:
    """Where a job's trained model (full weights or adapter) is shared."""
    return f"models/ft/{job_id}"


def checkpoints_key(job_id: str) -> str:
    """Where a job's checkpoints (`step-N` folders) are shared."""
    return f"jobs/{job_id}/checkpoints"


def fetch_tree(key: str, folder: Path) -> bool:
    """Make the shared folder `key` the local `folder`, whole: copied beside it, then renamed into
    place, so a reader never sees half of it. Whether `folder` is there afterwards."""
    if folder.is_dir():
        return True
    partial = folder.with_name(f"{folder.name}.{_writer()}.fetch")
    try:
        if pull_tree(key, partial):
            with contextlib.suppress(OSError):  # another process put it there first
                os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder.is_dir()
