"""The FastAPI application: routers under `/v1`, auth, error envelope, the serving engine (in app
state, where the routes find it) and the in-process worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from tunehouse import __version__
from tunehouse.api.auth import require_admin_key, require_api_key
from tunehouse.api.chat.router import router as chat_router
from tunehouse.api.completions.router import router as completions_router
from tunehouse.api.errors import install_error_handlers
from tunehouse.api.evals.router import router as evals_router
from tunehouse.api.files.router import router as files_router
from tunehouse.api.fine_tunes.router import router as fine_tunes_router
from tunehouse.api.fine_tuning.router import router as fine_tuning_router
from tunehouse.api.graders.router import router as graders_router
from tunehouse.api.guard import RequestGuard
from tunehouse.api.metrics import router as metrics_router
from tunehouse.api.models.router import router as models_router
from tunehouse.api.organization.router import router as organization_router
from tunehouse.api.webhooks.router import router as webhooks_router
from tunehouse.api.workers.router import require_operator
from tunehouse.api.workers.router import router as workers_router
from tunehouse.serve.backends import serving_engine
from tunehouse.store.blobs import remove_stale_temporaries
from tunehouse.store.db import checkpoint, engine
from tunehouse.web import mount_dashboard


def create_app(run_worker: bool = False) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine()  # create the schema before the first request
        remove_stale_temporaries()
        stop = None
        if run_worker:
            from tunehouse.jobs.worker import start_worker_thread

            thread, stop = start_worker_thread(app.state.engine)  # eval runs generate on the server's engine
        yield
        # uvicorn gave requests in flight their grace period and cancelled the rest; a generation still
        # running ends at its next token, and nothing waiting starts.
        app.state.engine.close()
        if stop is not None:
            stop.set()
            thread.join(timeout=10)
        checkpoint()  # a copy of tunehouse.db alone, after a clean stop, is then the whole store

    app = FastAPI(title="tunehouse", version=__version__, lifespan=lifespan)
    app.state.engine = serving_engine()  # TUNEHOUSE_SERVE_BACKEND: the built-in engine or vLLM
    install_error_handlers(app)
    app.add_middleware(RequestGuard)  # foreign hosts and origins, body sizes: before any route
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
    for router in (files_router, fine_tuning_router, fine_tunes_router, models_router, chat_router, completions_router):
        v1.include_router(router)
    v1.include_router(evals_router)
    v1.include_router(graders_router)
    v1.include_router(webhooks_router)
    app.include_router(v1)
    app.include_router(organization_router, prefix="/v1", dependencies=[Depends(require_admin_key)])
    app.include_router(workers_router, dependencies=[Depends(require_operator)])
    app.include_router(metrics_router)  # Prometheus's `/metrics`, at the root where it looks

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    mount_dashboard(app)  # the web dashboard at `/`; it reads `/v1` with the user's key
    return app
