"""Bearer-key check, and the project a request acts for.

Single-user mode is unchanged: the one `--api-key` (or, with none configured, any key on loopback)
acts for the default project. A project key (`sk-svcacct-…`, made through the admin API) acts for
its own project. The admin key (TUNEHOUSE_ADMIN_KEY) manages projects and keys and nothing else,
as OpenAI's admin keys do. The project is resolved once here and entered for the whole request.
"""

from __future__ import annotations

import secrets

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tunehouse.config import settings
from tunehouse.errors import AuthenticationFailed
from tunehouse.store.projects import DEFAULT_PROJECT_ID, KEY_PREFIX, enter_project, project_of_key


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.", code="missing_api_key"
        )
    return given.strip()


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and secrets.compare_digest(given.encode(), expected.encode())


def _incorrect(given: str) -> AuthenticationFailed:
    shown = given[:3] + "*" * max(0, len(given) - 7) + given[-4:] if len(given) > 8 else "****"
    return AuthenticationFailed(f"Incorrect API key provided: {shown}.")


async def require_api_key(request: Request) -> None:
    """Checked on the event loop (a sync dependency would take a worker thread for every request); a
    project key's lookup alone goes to a thread."""
    config = settings()
    open_server = not config.api_key and not config.admin_key
    try:
        given = _bearer(request)
    except AuthenticationFailed:
        if not open_server:
            raise
        given = ""
    if _same(given, config.api_key):
        project = DEFAULT_PROJECT_ID
    elif _same(given, config.admin_key):
        raise AuthenticationFailed(
            "The admin key manages projects and their keys (/v1/organization/…); use a project's API key here.",
            code="insufficient_permissions",
        )
    else:
        found = await run_in_threadpool(project_of_key, given) if given.startswith(KEY_PREFIX) else None
        if found is None and not open_server:
            raise _incorrect(given)
        project = found or DEFAULT_PROJECT_ID
    request.state.project_id = project
    enter_project(project)


async def require_admin_key(request: Request) -> None:
    """The admin routes' check: only TUNEHOUSE_ADMIN_KEY; a project key lacks the permission (401, as
    OpenAI answers a key without `api.management` scopes)."""
    given = _bearer(request)
    expected = settings().admin_key
    if _same(given, expected):
        return
    if expected is None:
        raise AuthenticationFailed(
            "Projects and keys are managed with the admin key; this server has none (set TUNEHOUSE_ADMIN_KEY).",
            code="insufficient_permissions",
        )
    if _same(given, settings().api_key) or given.startswith(KEY_PREFIX):
        raise AuthenticationFailed(
            "You have insufficient permissions for this operation: it needs the admin key.",
            code="insufficient_permissions",
        )
    raise _incorrect(given)
