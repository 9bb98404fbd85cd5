"""HTTP for `/models`. Model ids may contain `/` (e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`)."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from tunehouse.models import catalog
from tunehouse.models.catalog import ModelInfo

router = APIRouter()


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    shutdown_date: str | None = None

    @classmethod
    def from_info(cls, info: ModelInfo) -> Model:
        return cls(id=info.id, created=info.created or int(time.time()), owned_by=info.owned_by)


@router.get("/models")
def list_models() -> dict[str, Any]:
    return {"object": "list", "data": [Model.from_info(m).model_dump() for m in catalog.list_models()]}


@router.get("/models/{model_id:path}")
def retrieve_model(model_id: str) -> dict[str, Any]:
    return Model.from_info(catalog.get_model(model_id)).model_dump()


@router.delete("/models/{model_id:path}")
def delete_model(model_id: str, request: Request) -> dict[str, Any]:
    request.app.state.engine.delete(model_id)
    return {"id": model_id, "object": "model", "deleted": True}
