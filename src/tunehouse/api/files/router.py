"""HTTP for `/files`: multipart upload, list, retrieve, delete, content."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from tunehouse.api.files.protocol import FileDeleted, FileObject
from tunehouse.api.pagination import check_limit
from tunehouse.errors import InvalidRequest
from tunehouse.store import files
from tunehouse.store.blobs import existing_blob

router = APIRouter()
CHUNK = 1024 * 1024
SNIFF_BYTES = 1024 * 1024


def _chunks(upload: UploadFile) -> Iterator[bytes]:
    upload.file.seek(0)
    while chunk := upload.file.read(CHUNK):
        yield chunk


def _expires_after(form: Any) -> int | None:
    seconds = form.get("expires_after[seconds]")
    if seconds is None:
        return None
    if form.get("expires_after[anchor]", "created_at") != "created_at":
        raise InvalidRequest("expires_after[anchor] must be 'created_at'.", param="expires_after.anchor")
    try:
        value = int(seconds)
    except ValueError as exc:
        raise InvalidRequest("expires_after[seconds] must be an integer.", param="expires_after.seconds") from exc
    if not 3600 <= value <= 2_592_000:
        raise InvalidRequest("expires_after[seconds] must be between 3600 and 2592000.", param="expires_after.seconds")
    return value


def _looks_like_jsonl(upload: UploadFile) -> bool:
    """A `.jsonl` name, or — for clients that name every upload `file`, as the 0.x SDK's
    `File.create` does — a first line that is a JSON object. The content is validated afterwards."""
    if (upload.filename or "").lower().endswith(".jsonl"):
        return True
    upload.file.seek(0)
    head = upload.file.read(SNIFF_BYTES)
    upload.file.seek(0)
    first = next((line for line in head.splitlines() if line.strip()), b"")
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


@router.post("/files")
async def create_file(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("Upload files as multipart/form-data with fields 'file' and 'purpose'.", param="file")
    form = await request.form(max_part_size=1024 * 1024)
    try:
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Missing required parameter: 'file'.", param="file")
        if not isinstance(purpose, str) or not purpose:
            raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
        expires = _expires_after(form)
        if purpose == "fine-tune" and not _looks_like_jsonl(upload):
            raise InvalidRequest(
                f"Invalid file format for fine-tuning: '{upload.filename}'. Fine-tuning files must be "
                "JSONL (.jsonl), one example per line.",
                param="file",
            )
        # the copy into the blob store reads and writes the whole file: off the event loop
        row = await run_in_threadpool(files.create_file, upload.filename or "upload", purpose, _chunks(upload), expires)
    finally:
        await form.close()
    return FileObject.from_row(row).to_wire()


@router.get("/files")
def list_files(
    after: str | None = None,
    limit: int = Query(10_000),
    order: str = Query("desc"),
    purpose: str | None = None,
) -> dict[str, Any]:
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
    page = files.list_files(after, check_limit(limit, 10_000), order, purpose)
    data = [FileObject.from_row(r) for r in page.items]
    return {
        "object": "list",
        "data": [f.to_wire() for f in data],
        "first_id": data[0].id if data else "",
        "last_id": data[-1].id if data else "",
        "has_more": page.has_more,
    }


@router.get("/files/{file_id}")
def retrieve_file(file_id: str) -> dict[str, Any]:
    return FileObject.from_row(files.get_file(file_id)).to_wire()


@router.delete("/files/{file_id}")
def delete_file(file_id: str) -> dict[str, Any]:
    files.delete_file(file_id)
    return FileDeleted(id=file_id, deleted=True).model_dump()


@router.get("/files/{file_id}/content")
def file_content(file_id: str) -> FileResponse:
    row = files.get_file(file_id)
    path = existing_blob(row.blob, param="file_id")
    return FileResponse(path, media_type="application/octet-stream", filename=row.filename)
