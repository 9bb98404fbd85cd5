"""Wire shapes of OpenAI's admin API for projects (`Project`, `ProjectServiceAccount`,
`ProjectServiceAccountCreateResponse`, `ProjectApiKey` and their lists and deletions)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from tunehouse.api.request import OpenAIRequest
from tunehouse.store.schema import ApiKeyRow, ProjectRow, ServiceAccountRow


class ProjectCreateRequest(OpenAIRequest):
    name: Any = None


class ProjectUpdateRequest(OpenAIRequest):
    name: Any = None


class ServiceAccountCreateRequest(OpenAIRequest):
    name: Any = None


class Project(BaseModel):
    id: str
    object: Literal["organization.project"] = "organization.project"
    name: str
    created_at: int
    archived_at: int | None
    status: Literal["active", "archived"]

    @classmethod
    def from_row(cls, row: ProjectRow) -> Project:
        status: Literal["active", "archived"] = "active" if row.archived_at is None else "archived"
        return cls(id=row.id, name=row.name, created_at=row.created_at, archived_at=row.archived_at, status=status)


class ServiceAccount(BaseModel):
    id: str
    object: Literal["organization.project.service_account"] = "organization.project.service_account"
    name: str
    role: str
    created_at: int

    @classmethod
    def from_row(cls, row: ServiceAccountRow) -> ServiceAccount:
        return cls(id=row.id, name=row.name, role=row.role, created_at=row.created_at)


class ServiceAccountKey(BaseModel):
    """The key as created: its `value` is in this response and nowhere else, ever."""

    object: Literal["organization.project.service_account.api_key"] = "organization.project.service_account.api_key"
    value: str
    name: str
    created_at: int
    id: str


class ServiceAccountCreated(ServiceAccount):
    api_key: ServiceAccountKey


class KeyOwnerAccount(BaseModel):
    id: str
    name: str
    created_at: int
    role: str


class KeyOwner(BaseModel):
    type: Literal["service_account"] = "service_account"
    service_account: KeyOwnerAccount


class ApiKey(BaseModel):
    object: Literal["organization.project.api_key"] = "organization.project.api_key"
    redacted_value: str
    name: str
    created_at: int
    last_used_at: int | None
    id: str
    owner_project_access: Literal["active", "inactive"]
    owner: KeyOwner

    @classmethod
    def from_row(cls, row: ApiKeyRow, account: ServiceAccountRow, project_active: bool) -> ApiKey:
        return cls(
            redacted_value=row.redacted_value,
            name=row.name,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            id=row.id,
            owner_project_access="active" if project_active else "inactive",
            owner=KeyOwner(
                service_account=KeyOwnerAccount(
                    id=account.id, name=account.name, created_at=account.created_at, role=account.role
                )
            ),
        )


class Deleted(BaseModel):
    object: str
    id: str
    deleted: bool = True


def listing(data: list[Any], has_more: bool) -> dict[str, Any]:
    """OpenAI's list envelope around already dumped objects."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
