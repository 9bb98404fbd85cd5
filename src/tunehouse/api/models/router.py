"""HTTP for `/models`. Model ids may contain `/` (e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`).

Each model says what it derives from, as vLLM's model cards do: `parent` (a fine-tune's base, a
checkpoint's model, an alias's target) and `root` (the base whose weights it runs on). Aliases are
listed as models of their own, after the registered ones.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from tunehouse.models import catalog
from tunehouse.models.aliases import list_aliases
from tunehouse.models.catalog import ModelInfo
from tunehouse.models.export.archive import export_archive

router = APIRouter()


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    shutdown_date: str | None = None
    parent: str | None = None
    root: str

    @classmethod
    def from_info(cls, info: ModelInfo, name: str | None = None) -> Model:
        """`info` under its own id, or under `name` when that is an alias of it."""
        return cls(
            id=name or info.id,
            created=info.created or int(time.time()),
            owned_by=info.owned_by,
            parent=info.id if name and name != info.id else info.base_model,
            root=catalog.base_of(info).id,
        )


@router.get("/models")
def list_models() -> dict[str, Any]:
    models = catalog.list_models()
    by_id = {m.id: m for m in models}
    data = [Model.from_info(m) for m in models]
    data += [Model.from_info(by_id[a.target], a.name) for a in list_aliases() if a.target in by_id]
    return {"object": "list", "data": [m.model_dump() for m in data]}


@router.get("/models/{model_id:path}")
def retrieve_model(model_id: str) -> dict[str, Any]:
    return Model.from_info(catalog.get_model(model_id), model_id).model_dump()


class ExportRequest(BaseModel):
    format: str
    """adapter, merged, gguf, ollama or vllm (`tunehouse models export --format`)."""
    quantization: str | None = None
    verify: bool | None = None
    """Check the export against the model before sending it (default true)."""


@router.post("/models/{model_id:path}/export")
def export_model(model_id: str, body: ExportRequest) -> FileResponse:
    """The model exported and checked, as one tar archive, for the dashboard's Export button.

    Synchronous: a model this server trains exports in seconds to minutes, the archive is built on
    disk and streamed, and nothing is left to clean up or poll; `tunehouse models export` does the
    same from a shell. The checks' outcome is in `X-Tunehouse-Export` and `export-report.json`.
    """
    archive = export_archive(model_id, body.format, quantization=body.quantization, verify=body.verify is not False)
    report = archive.report
    summary = {
        "passed": report.passed,
        "logits_max_abs_diff": report.logits.max_abs_diff if report.logits else None,
        "llamacpp": {check.file: check.status for check in report.gguf},
    }
    return FileResponse(
        archive.path,
        media_type="application/x-tar",
        filename=archive.filename,
        headers={"X-Tunehouse-Export": json.dumps(summary)},
        background=BackgroundTask(shutil.rmtree, archive.scratch, ignore_errors=True),
    )


@router.delete("/models/{model_id:path}")
def delete_model(model_id: str, request: Request) -> dict[str, Any]:
    request.app.state.engine.delete(model_id)
    return {"id": model_id, "object": "model", "deleted": True}
