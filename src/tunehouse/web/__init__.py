"""The web dashboard: static HTML + vanilla JS served at `/`, reading the server's own `/v1` API.

No build step and no CDN: `static/` is shipped as package data. The page holds no data of its own —
every number comes from `/v1` with the user's API key (kept in the browser's localStorage), so the
dashboard sees exactly what the SDK and the CLI see (PITFALLS 8: a refresh loses nothing).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from tunehouse import __version__
from tunehouse.config import settings

STATIC = Path(__file__).parent / "static"


def mount_dashboard(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/dashboard/api/info", include_in_schema=False)
    def dashboard_info() -> dict[str, object]:
        """What the page must know before it has a key: whether to ask for one."""
        config = settings()
        return {"auth_required": bool(config.api_key or config.admin_key), "version": __version__}

    app.mount("/static", StaticFiles(directory=STATIC), name="dashboard-static")
