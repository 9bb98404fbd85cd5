"""One place that knows how a model id resolves to weights.

Model ids: the shipped base model, local Hugging Face folders registered as base models, fine-tuned
models (`ft:{base}:{org}:{suffix}:{id}`) and their checkpoints (`…:ckpt-step-N`). Fine-tuned models
are a LoRA adapter over a base, or a full set of weights.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunehouse.config import settings
from tunehouse.errors import Conflict, InvalidRequest, InvalidValue, ModelLoadError, ModelNotFound
from tunehouse.models.shipped import (
    SHIPPED_CREATED,
    SHIPPED_MODEL_ID,
    SHIPPED_OWNER,
    materialize_shipped_model,
)
from tunehouse.store.db import session
from tunehouse.store.schema import ModelRow


@dataclass(frozen=True)
class ModelInfo:
    id: str
    kind: str  # base | fine-tuned | checkpoint
    created: int
    owned_by: str
    path: Path
    base_model: str | None = None
    adapter: bool = False
    job_id: str | None = None


def _folder_name(model_id: str) -> str:
    return model_id.replace("/", "--").replace(":", "_")


def _from_row(row: ModelRow) -> ModelInfo:
    return ModelInfo(
        id=row.id,
        kind=row.kind,
        created=row.created,
        owned_by=row.owned_by,
        path=Path(row.path),
        base_model=row.base_model,
        adapter=row.adapter,
        job_id=row.job_id,
    )


def _shipped_info() -> ModelInfo:
    return ModelInfo(
        id=SHIPPED_MODEL_ID,
        kind="base",
        created=SHIPPED_CREATED,
        owned_by=SHIPPED_OWNER,
        path=settings().models_dir / _folder_name(SHIPPED_MODEL_ID),
    )


def model_not_found(model_id: str, *, param: str = "model") -> ModelNotFound:
    """The error for a model id that is not (or no longer) registered."""
    return ModelNotFound(f"The model '{model_id}' does not exist or you do not have access to it.", param=param)


def get_model(model_id: str, *, param: str = "model") -> ModelInfo:
    """The model registered under `model_id`, or ModelNotFound naming it."""
    if model_id == SHIPPED_MODEL_ID:
        return _shipped_info()
    with session() as s:
        row = s.get(ModelRow, model_id)
        if row is None:
            raise model_not_found(model_id, param=param)
        return _from_row(row)


def list_models(include_checkpoints: bool = False) -> list[ModelInfo]:
    with session() as s:
        rows = s.scalars(select(ModelRow).order_by(ModelRow.created.desc())).all()
        models = [_from_row(r) for r in rows if include_checkpoints or r.kind != "checkpoint"]
    return [_shipped_info(), *models]


def weights_dir(model: ModelInfo) -> Path:
    """The folder to load for a base model, materializing the shipped model on first use."""
    if model.id == SHIPPED_MODEL_ID:
        return materialize_shipped_model(model.path)
    if not (model.path / "config.json").exists():
        raise ModelLoadError(f"Model '{model.id}': no config.json in {model.path}.", param="model")
    return model.path


def base_of(model: ModelInfo) -> ModelInfo:
    """The base model a fine-tuned model or checkpoint was trained from (itself for a base)."""
    seen = model
    while seen.base_model is not None:
        seen = get_model(seen.base_model)
    return seen


def register_base_model(model_id: str, path: Path, owned_by: str = "user") -> ModelInfo:
    """Register a local Hugging Face model folder (config, weights and tokenizer) as a base model."""
    path = path.expanduser().resolve()
    if not model_id or model_id.startswith("ft:"):
        raise InvalidValue("A base model id must be non-empty and must not start with 'ft:'.", param="id")
    if not (path / "config.json").exists():
        raise InvalidRequest(f"{path} is not a Hugging Face model folder: it has no config.json.", param="path")
    try:
        json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{path / 'config.json'} is not valid JSON: {exc}", param="path") from exc
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise InvalidRequest(f"{path} has no tokenizer files (tokenizer.json).", param="path")
    with session() as s:
        if model_id == SHIPPED_MODEL_ID or s.get(ModelRow, model_id) is not None:
            raise Conflict(f"A model named '{model_id}' is already registered.", param="id")
        row = ModelRow(id=model_id, kind="base", created=int(time.time()), owned_by=owned_by, path=str(path))
        s.add(row)
        return _from_row(row)


def register_trained_model(
    model_id: str,
    *,
    kind: str,
    path: Path,
    base_model: str,
    adapter: bool,
    job_id: str,
) -> ModelInfo:
    with session() as s:
        row = ModelRow(
            id=model_id,
            kind=kind,
            created=int(time.time()),
            owned_by=settings().organization,
            path=str(path),
            base_model=base_model,
            adapter=adapter,
            job_id=job_id,
        )
        s.merge(row)
        return _from_row(row)


def delete_model(model_id: str) -> None:
    """Delete a fine-tuned model, its checkpoints' registrations and its weights; base models stay."""
    model = get_model(model_id)
    if model.kind == "base":
        raise InvalidRequest(
            f"'{model_id}' is a base model and cannot be deleted; only fine-tuned models can.",
            param="model",
        )
    with session() as s:
        s.delete(s.get(ModelRow, model_id))
    if model.kind == "fine-tuned":
        shutil.rmtree(model.path, ignore_errors=True)


def tokenizer_dir(model_id: str) -> Path:
    """The folder holding `model_id`'s tokenizer (its base model's folder for adapters)."""
    model = get_model(model_id)
    if model.kind == "base":
        return weights_dir(model)
    if model.adapter:
        return weights_dir(base_of(model))
    return model.path


def load_tokenizer(model_id: str) -> Any:
    """The model's own tokenizer (with its chat template), loaded offline from disk."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir(model_id)))
