"""Wire shapes of `/files`, mirroring OpenAI's `OpenAIFile`, `ListFilesResponse`, `DeleteFileResponse`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from tunehouse.store.schema import FileRow


class FileObject(BaseModel):
    """`expires_at` and `status_details` are typed non-null in OpenAI's schema: omitted when unset."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: str
    status_details: str | None = None

    @classmethod
    def from_row(cls, row: FileRow) -> FileObject:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            expires_at=row.expires_at,
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,
            status_details=row.status_details,
        )

    def to_wire(self) -> dict:
        return self.model_dump(exclude_none=True)


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool
