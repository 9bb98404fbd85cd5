"""Blobs on local disk, written atomically: a temporary file in the same folder, fsync, rename.

A crash mid-upload leaves at most a `.tmp` file, never a half-written blob that the store points at.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tunehouse.config import settings
from tunehouse.errors import PayloadTooLarge


def blob_path(key: str) -> Path:
    return settings().blobs_dir / key


def write_blob(key: str, chunks: Iterable[bytes], max_bytes: int | None = None) -> int:
    """Write `chunks` to the blob `key`; returns its size. Raises PayloadTooLarge past `max_bytes`."""
    target = blob_path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size


def delete_blob(key: str) -> None:
    blob_path(key).unlink(missing_ok=True)
