"""Uploaded files: metadata rows plus an atomically written blob each."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select

from tunehouse.config import settings
from tunehouse.errors import InvalidValue, NotFound
from tunehouse.ids import new_id
from tunehouse.store.blobs import blob_path, delete_blob, write_blob
from tunehouse.store.db import session
from tunehouse.store.pages import Page, page_newest_first
from tunehouse.store.projects import owner, visible
from tunehouse.store.schema import FileRow

UPLOAD_PURPOSES = {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}


def safe_filename(name: str) -> str:
    """The name's last path part, without control characters (NUL included), at most 255 characters."""
    base = Path(name.replace("\\", "/")).name
    cleaned = "".join(c for c in base if c.isprintable()).strip()
    return cleaned[:255] or "upload"


def create_file(
    filename: str,
    purpose: str,
    chunks: Iterable[bytes],
    expires_after_seconds: int | None = None,
    *,
    internal: bool = False,
) -> FileRow:
    """Store an upload. `internal` allows server-made purposes such as `fine-tune-results`."""
    if not internal and purpose not in UPLOAD_PURPOSES:
        raise InvalidValue(
            f"Invalid purpose '{purpose}'. Expected one of: {', '.join(sorted(UPLOAD_PURPOSES))}.",
            param="purpose",
        )
    file_id = new_id("file-")
    key = f"files/{file_id}"
    size = write_blob(key, chunks, max_bytes=settings().max_file_bytes)
    now = int(time.time())
    row = FileRow(
        id=file_id,
        filename=safe_filename(filename),
        bytes=size,
        purpose=purpose,
        created_at=now,
        expires_at=now + expires_after_seconds if expires_after_seconds else None,
        status="processed",
        blob=key,
        project_id=owner(),
    )
    try:
        with session() as s:
            s.add(row)
    except BaseException:
        delete_blob(key)
        raise
    return row


def get_file(file_id: str, param: str = "file_id") -> FileRow:
    with session() as s:
        row = s.scalar(select(FileRow).where(FileRow.id == file_id, visible(FileRow.project_id)))
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param=param)
    return row


def file_path(row: FileRow) -> Path:
    return blob_path(row.blob)


def list_files(after: str | None, limit: int, order: str, purpose: str | None) -> Page[FileRow]:
    query = select(FileRow).where(visible(FileRow.project_id))
    if purpose:
        query = query.where(FileRow.purpose == purpose)
    return page_newest_first(query, FileRow, after, limit, ascending=(order == "asc"))


def delete_file(file_id: str) -> None:
    row = get_file(file_id)
    with session() as s:
        s.delete(s.merge(row))
    delete_blob(row.blob)
