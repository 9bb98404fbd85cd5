"""What a source job becomes here: its settings read from the source's job object, the base model it
fine-tunes mapped to a model served here, and the job request that re-creates it.

OpenAI's job object has no `suffix`: it is read back from the fine-tuned model's name
(`ft:{base}:{org}:{suffix}:{id}`). Hyperparameters are the numbers the source resolved where it
reports them, so `auto` picks nothing different here. Integrations (W&B) are not carried: their
credentials stay with the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunehouse.errors import InvalidValue, ModelNotFound
from tunehouse.jobs.service import JobRequest
from tunehouse.models.catalog import get_model, list_models

MIGRATED_FROM = "migrated_from"
"""The metadata key naming the source job on the job re-created here."""
METADATA_LIMIT = 16  # pairs, as OpenAI allows
METHODS = ("supervised", "dpo")


@dataclass(frozen=True)
class SourceJob:
    """The settings of a job on the source that a copy here repeats."""

    id: str
    model: str
    fine_tuned_model: str
    training_file: str
    validation_file: str | None
    method_type: str
    hyperparameters: dict[str, Any]
    suffix: str | None
    seed: int | None
    metadata: dict[str, str]
    has_integrations: bool

    @classmethod
    def from_wire(cls, job: dict[str, Any]) -> SourceJob:
        """Read the source's job object (OpenAI's `FineTuningJob`), refusing a method tunehouse does not train."""
        method = job.get("method") or {}
        method_type = method.get("type") or "supervised"
        if method_type not in METHODS:
            raise InvalidValue(
                f"Job {job['id']} was trained with method '{method_type}', which tunehouse does not train "
                f"({' and '.join(METHODS)} only): leave it out by naming the other jobs with --job.",
                param="method.type",
            )
        section = method.get(method_type) or {}
        resolved = job.get("hyperparameters") or {}
        hyperparameters = {}
        for name, value in {**resolved, **(section.get("hyperparameters") or {})}.items():
            if (value is None or value == "auto") and isinstance(resolved.get(name), int | float):
                value = resolved[name]  # the number the source trained with
            if value is not None:
                hyperparameters[name] = value
        fine_tuned_model = job.get("fine_tuned_model") or ""
        suffix = fine_tuned_model.rsplit(":", 2)[-2] if fine_tuned_model.count(":") >= 4 else ""
        return cls(
            id=job["id"],
            model=job["model"],
            fine_tuned_model=fine_tuned_model,
            training_file=job["training_file"],
            validation_file=job.get("validation_file"),
            method_type=method_type,
            hyperparameters=hyperparameters,
            suffix=suffix or None,
            seed=job.get("seed"),
            metadata={str(k): str(v) for k, v in (job.get("metadata") or {}).items()},
            has_integrations=bool(job.get("integrations")),
        )

    def settings_text(self) -> str:
        """The settings in one line, for the dry run and the report."""
        numbers = ", ".join(f"{name}={value}" for name, value in sorted(self.hyperparameters.items()))
        parts = [f"{self.method_type} ({numbers or 'defaults'})"]
        if self.suffix:
            parts.append(f"suffix '{self.suffix}'")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        if self.metadata:
            parts.append(f"metadata {self.metadata}")
        return ", ".join(parts)


def parse_model_map(entries: list[str]) -> dict[str, str]:
    """`--map-model SRC=DEST` pairs as a dict; each DEST must be a model (or alias) served here."""
    mapping = {}
    for entry in entries:
        source, sep, target = (part.strip() for part in entry.partition("="))
        if not sep or not source or not target:
            raise InvalidValue(f"--map-model '{entry}' is not SOURCE-MODEL=MODEL-HERE.", param="map_model")
        try:
            get_model(target)
        except ModelNotFound as exc:
            raise InvalidValue(f"--map-model {entry}: {exc.message}", param="map_model") from exc
        mapping[source] = target
    return mapping


@dataclass(frozen=True)
class BaseModel:
    """The model a copy fine-tunes here: `name` as the job is given it; `parent_job` when it is the
    fine-tuned model of another source job, not yet trained here."""

    name: str | None
    how: str
    parent_job: str | None = None


def map_base_model(job: SourceJob, model_map: dict[str, str], parents: dict[str, str]) -> BaseModel:
    """The base model for `job` here: `--map-model`'s choice, else the same id or an alias of it, else —
    for a fine-tune of another migrated job — that job's new model once it is trained (`parents` maps
    the source's `ft:` ids to their job ids). InvalidValue naming `--map-model` when none fits."""
    if job.model in model_map:
        return BaseModel(model_map[job.model], f"mapped by --map-model to {model_map[job.model]}")
    try:
        found = get_model(job.model)
    except ModelNotFound:
        found = None
    if found is not None:
        how = "the same model here" if found.id == job.model else f"an alias here of {found.id}"
        return BaseModel(job.model, how)
    if job.model in parents:
        return BaseModel(None, f"the model of {parents[job.model]}, once migrated", parent_job=parents[job.model])
    here = ", ".join(model.id for model in list_models()[:8])
    raise InvalidValue(
        f"Job {job.id} fine-tunes '{job.model}', which is not a model or alias here. Pass --map-model "
        f"{job.model}=MODEL with a model served here ({here}), or alias it with "
        f"`tunehouse models alias {job.model} MODEL`.",
        param="map_model",
    )


def job_request(job: SourceJob, model: str, training_file: str, validation_file: str | None) -> JobRequest:
    """The request that re-creates `job` here on `model` with the copied files; its metadata also
    names the source job, while there is room for one more pair."""
    metadata = dict(job.metadata)
    if len(metadata) < METADATA_LIMIT or MIGRATED_FROM in metadata:
        metadata[MIGRATED_FROM] = job.id
    return JobRequest(
        model=model,
        training_file=training_file,
        validation_file=validation_file,
        method={"type": job.method_type, job.method_type: {"hyperparameters": dict(job.hyperparameters)}},
        suffix=job.suffix,
        seed=job.seed,
        metadata=metadata or None,
    )
