"""Blobs on local disk, written atomically: a temporary file in the same folder, fsync, rename.

A crash mid-upload leaves at most a `.tmp` file, never a half-written blob that the store points at;
`remove_stale_temporaries` clears those at start. A full disk is `InsufficientStorage` (507), with
the partial file removed.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from tunehouse.config import settings
from tunehouse.errors import InsufficientStorage, NotFound, PayloadTooLarge

STALE_TEMPORARY_SECONDS = 3600
"""A `.tmp` blob this old is no upload in progress, whoever wrote it."""

log = logging.getLogger(__name__)


def blob_path(key: str) -> Path:
    return settings().blobs_dir / key


def write_blob(key: str, chunks: Iterable[bytes], max_bytes: int | None = None) -> int:
    """Write `chunks` to the blob `key`; returns its size. Raises PayloadTooLarge past `max_bytes`."""
    target = blob_path(key)
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
    blob_path(key).unlink(missing_ok=True)
