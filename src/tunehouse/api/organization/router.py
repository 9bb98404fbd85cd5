"""HTTP for OpenAI's project admin routes, under the admin key alone (`api/auth.py`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from tunehouse.api.organization.protocol import (
    ApiKey,
    Deleted,
    Project,
    ProjectCreateRequest,
    ProjectUpdateRequest,
    ServiceAccount,
    ServiceAccountCreated,
    ServiceAccountCreateRequest,
    ServiceAccountKey,
    listing,
)
from tunehouse.api.pagination import check_limit
from tunehouse.store import projects

router = APIRouter(prefix="/organization/projects")


@router.post("")
def create_project(body: ProjectCreateRequest) -> dict[str, Any]:
    return Project.from_row(projects.create_project(body.name)).model_dump()


@router.get("")
def list_projects(after: str | None = None, limit: int = Query(20), include_archived: bool = False) -> dict[str, Any]:
    page = projects.list_projects(after, check_limit(limit, 100), include_archived)
    return listing([Project.from_row(row).model_dump() for row in page.items], page.has_more)


@router.get("/{project_id}")
def retrieve_project(project_id: str) -> dict[str, Any]:
    return Project.from_row(projects.get_project(project_id)).model_dump()


@router.post("/{project_id}")
def modify_project(project_id: str, body: ProjectUpdateRequest) -> dict[str, Any]:
    return Project.from_row(projects.rename_project(project_id, body.name)).model_dump()


@router.post("/{project_id}/archive")
def archive_project(project_id: str) -> dict[str, Any]:
    return Project.from_row(projects.archive_project(project_id)).model_dump()


@router.post("/{project_id}/service_accounts")
def create_service_account(project_id: str, body: ServiceAccountCreateRequest) -> dict[str, Any]:
    account, key, value = projects.create_service_account(project_id, body.name)
    created = ServiceAccountCreated(
        **ServiceAccount.from_row(account).model_dump(),
        api_key=ServiceAccountKey(value=value, name=key.name, created_at=key.created_at, id=key.id),
    )
    return created.model_dump()


@router.get("/{project_id}/service_accounts")
def list_service_accounts(project_id: str, after: str | None = None, limit: int = Query(20)) -> dict[str, Any]:
    page = projects.list_service_accounts(project_id, after, check_limit(limit, 100))
    return listing([ServiceAccount.from_row(row).model_dump() for row in page.items], page.has_more)


@router.get("/{project_id}/service_accounts/{service_account_id}")
def retrieve_service_account(project_id: str, service_account_id: str) -> dict[str, Any]:
    return ServiceAccount.from_row(projects.get_service_account(project_id, service_account_id)).model_dump()


@router.delete("/{project_id}/service_accounts/{service_account_id}")
def delete_service_account(project_id: str, service_account_id: str) -> dict[str, Any]:
    projects.delete_service_account(project_id, service_account_id)
    return Deleted(object="organization.project.service_account.deleted", id=service_account_id).model_dump()


def _key(project_id: str, row: Any) -> dict[str, Any]:
    active = projects.get_project(project_id).archived_at is None
    return ApiKey.from_row(row, projects.account_of(row), active).model_dump()


@router.get("/{project_id}/api_keys")
def list_api_keys(project_id: str, after: str | None = None, limit: int = Query(20)) -> dict[str, Any]:
    page = projects.list_keys(project_id, after, check_limit(limit, 100))
    return listing([_key(project_id, row) for row in page.items], page.has_more)


@router.get("/{project_id}/api_keys/{api_key_id}")
def retrieve_api_key(project_id: str, api_key_id: str) -> dict[str, Any]:
    return _key(project_id, projects.get_key(project_id, api_key_id))


@router.delete("/{project_id}/api_keys/{api_key_id}")
def delete_api_key(project_id: str, api_key_id: str) -> dict[str, Any]:
    projects.delete_key(project_id, api_key_id)
    return Deleted(object="organization.project.api_key.deleted", id=api_key_id).model_dump()
