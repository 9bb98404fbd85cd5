"""One place that knows how a model id resolves to weights.

Model ids: the shipped base model, local Hugging Face folders registered as base models, fine-tuned
models (`ft:{base}:{org}:{suffix}:{id}`) and their checkpoints (`…:ckpt-step-N`). Fine-tuned models
are a LoRA adapter over a base, or a full set of weights. An alias (`aliases.py`) resolves to the
model it names wherever an id is accepted.
"""

from __future__ import annotations

import difflib
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, or_, select

from tunehouse.config import settings
from tunehouse.errors import Conflict, InvalidRequest, InvalidValue, ModelLoadError, ModelNotFound
from tunehouse.models.aliases import Alias, drop_alias, find_alias, list_aliases, store_alias
from tunehouse.models.shipped import (
    SHIPPED_CREATED,
    SHIPPED_MODEL_ID,
    SHIPPED_OWNER,
    materialize_shipped_model,
)
from tunehouse.store.blobs import checkpoints_key, fetch_tree, trained_model_key
from tunehouse.store.db import session
from tunehouse.store.projects import org_name, owner, visible
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


SHOWN_IN_NOT_FOUND = 8


def model_not_found(model_id: str, *, param: str = "model") -> ModelNotFound:
    """The error for a model id that is not (or no longer) registered: it names the nearest ids and
    the models that are served, so a typo or a name from another platform is fixed at a glance."""
    models = [m.id for m in list_models()]
    names = models + [alias.name for alias in list_aliases()]
    nearest = difflib.get_close_matches(model_id, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(n) for n in nearest)}?" if nearest else ""
    shown = ", ".join(models[:SHOWN_IN_NOT_FOUND]) + (" …" if len(models) > SHOWN_IN_NOT_FOUND else "")
    return ModelNotFound(
        f"The model '{model_id}' does not exist or you do not have access to it.{hint} Models here: {shown} "
        "(GET /v1/models lists them with their aliases; `tunehouse models alias NAME TARGET` adds one).",
        param=param,
    )


def _shared_or_own() -> ColumnElement[bool]:
    """Base models are every project's; a fine-tuned model and its checkpoints only its project's."""
    return or_(ModelRow.kind == "base", visible(ModelRow.project_id))


def _registered(model_id: str) -> ModelInfo | None:
    if model_id == SHIPPED_MODEL_ID:
        return _shipped_info()
    with session() as s:
        row = s.scalar(select(ModelRow).where(ModelRow.id == model_id, _shared_or_own()))
    return None if row is None else _here(_from_row(row))


def _here(model: ModelInfo) -> ModelInfo:
    """A trained model whose folder is on another machine (the worker that trained it): fetched once
    from the shared blob root (TUNEHOUSE_BLOB_URL) into this home, and used from there."""
    if model.kind == "base" or model.job_id is None or model.path.exists():
        return model
    if model.kind == "fine-tuned":
        key, local = trained_model_key(model.job_id), settings().models_dir / "ft" / model.job_id
    else:
        key = f"{checkpoints_key(model.job_id)}/{model.path.name}"
        local = settings().jobs_dir / model.job_id / "checkpoints" / model.path.name
    return replace(model, path=local) if fetch_tree(key, local) else model


def get_model(model_id: str, *, param: str = "model") -> ModelInfo:
    """The model registered under `model_id` or named by an alias of that name, else ModelNotFound."""
    info = _registered(model_id)
    if info is None:
        alias = find_alias(model_id)
        info = None if alias is None else _registered(alias.target)
    if info is None:
        raise model_not_found(model_id, param=param)
    return info


def alias_model(name: str, target: str, source: str = "user") -> Alias:
    """Make `name` stand for the model `target` (itself possibly an alias: the alias is followed)."""
    if not name or name != name.strip() or any(c in name for c in "\n\r\t"):
        raise InvalidValue(
            "An alias must be non-empty, without surrounding spaces or control characters.", param="name"
        )
    if _registered(name) is not None:
        raise Conflict(f"'{name}' is a registered model; an alias cannot hide it.", param="name")
    resolved = get_model(target, param="target")
    if resolved.id == name:
        raise InvalidValue(f"'{name}' cannot be an alias of itself.", param="target")
    return store_alias(name, resolved.id, source)


def unalias(name: str) -> None:
    """Remove an alias from the store; a shipped or configured one can only be overridden."""
    if drop_alias(name):
        return
    alias = find_alias(name)
    if alias is None:
        raise ModelNotFound(f"There is no alias named '{name}'.", param="name")
    raise InvalidRequest(
        f"'{name}' is a {alias.source} alias of '{alias.target}'; point it elsewhere with "
        f"`tunehouse models alias {name} OTHER-MODEL` instead.",
        param="name",
    )


def list_models(include_checkpoints: bool = False) -> list[ModelInfo]:
    with session() as s:
        rows = s.scalars(select(ModelRow).where(_shared_or_own()).order_by(ModelRow.created.desc())).all()
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


def weights_of(model: ModelInfo) -> ModelInfo:
    """The model whose weights `model` runs on: itself, or for a LoRA adapter the nearest ancestor that
    is not one (a base, or a full fine-tune the adapter was trained on)."""
    seen = model
    while seen.adapter and seen.base_model is not None:
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
            owned_by=org_name(owner()),
            path=str(path),
            base_model=base_model,
            adapter=adapter,
            job_id=job_id,
            project_id=owner(),
        )
        s.merge(row)
        return _from_row(row)


def delete_model(model_id: str) -> None:
    """Delete a fine-tuned model, its checkpoints' registrations and its weights; base models stay."""
    model = get_model(model_id)
    if model.id != model_id:
        raise InvalidRequest(
            f"'{model_id}' is an alias of '{model.id}'; remove the alias with `tunehouse models unalias "
            f"{model_id}`, or delete '{model.id}' by its own id.",
            param="model",
        )
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
