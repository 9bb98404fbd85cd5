"""Projects, their service accounts and API keys, and which project a request acts for.

Every owned object (file, job, fine-tuned model, eval, webhook endpoint) has a `project_id`; NULL
is the default project, the one that single-user mode (one `--api-key`, or none on loopback) has
always used, so a store made before projects existed is wholly the default project's.

The API resolves a request's key to a project once (`api/auth.py`) and enters it here; the stores
then filter with `visible(column)` and stamp new objects with `owner()`. A process that enters no
project (the worker, the trainer child before it enters its job's, local CLI commands) sees every
object. Keys are high-entropy random strings, so their SHA-256 is a safe digest to look them up by.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import ColumnElement, delete, select, true, update

from tunehouse.config import settings
from tunehouse.errors import InvalidRequest, NotFound
from tunehouse.ids import new_id
from tunehouse.store.db import session
from tunehouse.store.pages import Page, page_newest_first
from tunehouse.store.schema import ApiKeyRow, ProjectRow, ServiceAccountRow

DEFAULT_PROJECT_ID = "proj_default"
DEFAULT_PROJECT_NAME = "Default project"
KEY_PREFIX = "sk-svcacct-"

_current: ContextVar[str | None] = ContextVar("tunehouse_project", default=None)
"""The project this request (or trainer) acts for; None: no project entered, every object visible."""


# --- the acting project -------------------------------------------------------------------------


def enter_project(project_id: str) -> None:
    """Act for `project_id` from here on in this context (a request's task, a trainer process)."""
    _current.set(project_id)


@contextmanager
def acting_for(project_id: str | None) -> Iterator[None]:
    """Act for `project_id` (a row's `project_id`: None is the default project) inside the block."""
    token = _current.set(project_id or DEFAULT_PROJECT_ID)
    try:
        yield
    finally:
        _current.reset(token)


def current_project() -> str | None:
    """The project entered, or None where none was (then every object is visible)."""
    return _current.get()


def owner() -> str | None:
    """The `project_id` a new object gets: the acting project's, NULL for the default project."""
    project = _current.get()
    return None if project in (None, DEFAULT_PROJECT_ID) else project


def visible(column: Any) -> ColumnElement[bool]:
    """A WHERE clause keeping the rows whose `project_id` column is the acting project's."""
    project = _current.get()
    if project is None:
        return true()
    if project == DEFAULT_PROJECT_ID:
        return column.is_(None)
    return column == project


def sees(project_id: str | None) -> bool:
    """Whether an object owned by `project_id` (None: the default project) is the acting project's."""
    project = _current.get()
    return project is None or (project_id or DEFAULT_PROJECT_ID) == project


def org_name(project_id: str | None) -> str:
    """The `{org}` part of a fine-tuned model id: the organization for the default project, else the
    project's name made safe for an id (lowercase letters, digits and dashes; no colons)."""
    if project_id is None:
        return settings().organization
    with session() as s:
        name = s.scalar(select(ProjectRow.name).where(ProjectRow.id == project_id))
    return re.sub(r"[^a-z0-9]+", "-", (name or "").lower()).strip("-")[:40] or project_id


# --- projects -----------------------------------------------------------------------------------


def _ensure_default() -> None:
    """The default project has a row so it can be listed, renamed and given keys like any other."""
    with session() as s:
        if s.scalar(select(ProjectRow.id).where(ProjectRow.id == DEFAULT_PROJECT_ID)) is None:
            s.add(ProjectRow(id=DEFAULT_PROJECT_ID, name=DEFAULT_PROJECT_NAME, created_at=0, archived_at=None))


def _check_name(name: Any, param: str = "name") -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 256:
        raise InvalidRequest("A project's name must be a non-empty string of at most 256 characters.", param=param)
    return name.strip()


def create_project(name: Any) -> ProjectRow:
    _ensure_default()
    row = ProjectRow(id=new_id("proj_"), name=_check_name(name), created_at=int(time.time()), archived_at=None)
    with session() as s:
        s.add(row)
    return row


def get_project(project_id: str) -> ProjectRow:
    _ensure_default()
    with session() as s:
        row = s.scalar(select(ProjectRow).where(ProjectRow.id == project_id))
    if row is None:
        raise NotFound(f"No such project: {project_id}", param="project_id")
    return row


def list_projects(after: str | None, limit: int, include_archived: bool) -> Page[ProjectRow]:
    """Projects, oldest first as OpenAI lists them; archived ones only when asked for."""
    _ensure_default()
    query = select(ProjectRow)
    if not include_archived:
        query = query.where(ProjectRow.archived_at.is_(None))
    return page_newest_first(query, ProjectRow, after, limit, ascending=True)


def rename_project(project_id: str, name: Any) -> ProjectRow:
    get_project(project_id)
    with session() as s:
        s.execute(update(ProjectRow).where(ProjectRow.id == project_id).values(name=_check_name(name)))
    return get_project(project_id)


def archive_project(project_id: str) -> ProjectRow:
    """Archive a project: its keys stop working at once; its objects stay in the store."""
    if project_id == DEFAULT_PROJECT_ID:
        raise InvalidRequest("The default project cannot be archived.", param="project_id")
    project = get_project(project_id)
    if project.archived_at is None:
        with session() as s:
            s.execute(update(ProjectRow).where(ProjectRow.id == project_id).values(archived_at=int(time.time())))
    return get_project(project_id)


def _active_project(project_id: str) -> ProjectRow:
    project = get_project(project_id)
    if project.archived_at is not None:
        raise InvalidRequest(f"Project {project_id} is archived.", param="project_id")
    return project


# --- service accounts and keys ------------------------------------------------------------------


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_service_account(project_id: str, name: Any) -> tuple[ServiceAccountRow, ApiKeyRow, str]:
    """A service account of the project with a new API key; the key's value is returned only here."""
    _active_project(project_id)
    name = _check_name(name)
    now = int(time.time())
    value = KEY_PREFIX + secrets.token_urlsafe(32)
    account = ServiceAccountRow(id=new_id("svc_acct_"), project_id=project_id, name=name, role="member", created_at=now)
    key = ApiKeyRow(
        id=new_id("key_"),
        project_id=project_id,
        service_account_id=account.id,
        name="Secret key",
        digest=digest(value),
        redacted_value=f"{value[: len(KEY_PREFIX) + 2]}...{value[-4:]}",
        created_at=now,
        last_used_at=None,
    )
    with session() as s:
        s.add(account)
        s.flush()
        s.add(key)
    return account, key, value


def get_service_account(project_id: str, account_id: str) -> ServiceAccountRow:
    get_project(project_id)
    with session() as s:
        row = s.scalar(
            select(ServiceAccountRow).where(
                ServiceAccountRow.id == account_id, ServiceAccountRow.project_id == project_id
            )
        )
    if row is None:
        raise NotFound(f"No such service account: {account_id}", param="service_account_id")
    return row


def list_service_accounts(project_id: str, after: str | None, limit: int) -> Page[ServiceAccountRow]:
    get_project(project_id)
    query = select(ServiceAccountRow).where(ServiceAccountRow.project_id == project_id)
    return page_newest_first(query, ServiceAccountRow, after, limit, ascending=True)


def delete_service_account(project_id: str, account_id: str) -> None:
    """The account and its key: the key is refused from the next request on."""
    get_service_account(project_id, account_id)
    with session() as s:
        s.execute(delete(ApiKeyRow).where(ApiKeyRow.service_account_id == account_id))
        s.execute(delete(ServiceAccountRow).where(ServiceAccountRow.id == account_id))


def get_key(project_id: str, key_id: str) -> ApiKeyRow:
    get_project(project_id)
    with session() as s:
        row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.project_id == project_id))
    if row is None:
        raise NotFound(f"No such API key: {key_id}", param="api_key_id")
    return row


def list_keys(project_id: str, after: str | None, limit: int) -> Page[ApiKeyRow]:
    get_project(project_id)
    return page_newest_first(
        select(ApiKeyRow).where(ApiKeyRow.project_id == project_id), ApiKeyRow, after, limit, ascending=True
    )


def delete_key(project_id: str, key_id: str) -> None:
    """Delete a key (its service account stays, keyless): refused from the next request on."""
    get_key(project_id, key_id)
    with session() as s:
        s.execute(delete(ApiKeyRow).where(ApiKeyRow.id == key_id))


def account_of(key: ApiKeyRow) -> ServiceAccountRow:
    with session() as s:
        return s.scalars(select(ServiceAccountRow).where(ServiceAccountRow.id == key.service_account_id)).one()


def project_of_key(value: str) -> str | None:
    """The active project a key belongs to, or None for an unknown, deleted or archived project's key.
    Marks the key used (to the minute, so a busy key writes once a minute, not per request)."""
    wanted = digest(value)
    now = int(time.time())
    with session() as s:
        key = s.scalar(select(ApiKeyRow).where(ApiKeyRow.digest == wanted))
        if key is None or not secrets.compare_digest(key.digest, wanted):
            return None
        archived = s.scalar(select(ProjectRow.archived_at).where(ProjectRow.id == key.project_id))
        if archived is not None:
            return None
        if key.last_used_at is None or now - key.last_used_at >= 60:
            key.last_used_at = now
        return key.project_id
