"""Reading OpenAI's job objects and mapping their base models: what a migration from OpenAI itself
meets, checked on OpenAI's own example job (`tests/spec/openai-openapi-subset.json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunehouse.errors import InvalidValue
from tunehouse.migrate.plan import (
    MIGRATED_FROM,
    SourceJob,
    job_request,
    map_base_model,
    parse_model_map,
)

SPEC = Path(__file__).resolve().parents[1] / "spec" / "openai-openapi-subset.json"
SHIPPED = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def openai_job() -> dict[str, Any]:
    """The FineTuningJob example of OpenAI's API reference."""
    schema = json.loads(SPEC.read_text())["components"]["schemas"]["FineTuningJob"]
    return json.loads(schema["x-oaiMeta"]["example"])


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.delenv("TUNEHOUSE_MODEL_ALIASES", raising=False)
    return tmp_path


def test_openai_job_settings_are_read_with_the_suffix_from_the_model_name(openai_job: dict[str, Any]) -> None:
    job = SourceJob.from_wire(openai_job)
    assert (job.id, job.model, job.training_file, job.validation_file) == (
        "ftjob-abc123",
        "davinci-002",
        "file-abc123",
        None,
    )
    assert job.suffix == "custom_suffix" and job.seed == 0 and job.metadata == {"key": "value"}
    assert (job.method_type, job.hyperparameters) == (
        "supervised",
        {"n_epochs": 4, "batch_size": 1, "learning_rate_multiplier": 1.0},
    )
    request = job_request(job, "davinci-002", "file-here", None)
    assert request.method == {"type": "supervised", "supervised": {"hyperparameters": job.hyperparameters}}
    assert request.metadata == {"key": "value", MIGRATED_FROM: "ftjob-abc123"}
    assert (request.suffix, request.seed, request.training_file) == ("custom_suffix", 0, "file-here")


def test_auto_takes_the_number_the_source_resolved_and_no_suffix_is_none(openai_job: dict[str, Any]) -> None:
    openai_job |= {
        "fine_tuned_model": "ft:gpt-4o-mini-2024-07-18:my-org::8k01tfYd",
        "hyperparameters": {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.8},
        "method": {
            "type": "dpo",
            "dpo": {
                "hyperparameters": {
                    "beta": "auto",
                    "n_epochs": "auto",
                    "batch_size": 4,
                    "learning_rate_multiplier": None,
                }
            },
        },
    }
    job = SourceJob.from_wire(openai_job)
    assert job.suffix is None and job.method_type == "dpo"
    assert job.hyperparameters == {"beta": "auto", "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.8}


def test_a_method_tunehouse_does_not_train_is_refused_naming_the_job(openai_job: dict[str, Any]) -> None:
    openai_job["method"] = {"type": "reinforcement", "reinforcement": {}}
    with pytest.raises(InvalidValue, match="ftjob-abc123 was trained with method 'reinforcement'.*--job"):
        SourceJob.from_wire(openai_job)


def test_a_full_metadata_keeps_its_sixteen_pairs(openai_job: dict[str, Any]) -> None:
    openai_job["metadata"] = {f"k{i}": "v" for i in range(16)}
    request = job_request(SourceJob.from_wire(openai_job), "davinci-002", "file-here", None)
    assert request.metadata == openai_job["metadata"]


def test_base_models_map_to_the_same_id_an_alias_the_flag_or_a_parent(openai_job: dict[str, Any]) -> None:
    job = SourceJob.from_wire(openai_job)
    assert map_base_model(job, {}, {}).how == f"an alias here of {SHIPPED}"
    assert map_base_model(job, {}, {}).name == "davinci-002"  # the job keeps OpenAI's name, as the alias
    mapped = map_base_model(job, parse_model_map([f"davinci-002={SHIPPED}"]), {})
    assert (mapped.name, mapped.how) == (SHIPPED, f"mapped by --map-model to {SHIPPED}")

    child = SourceJob.from_wire(
        openai_job | {"id": "ftjob-child", "model": "ft:davinci-002:my-org:custom_suffix:7q8mpxmy"}
    )
    waiting = map_base_model(child, {}, {child.model: "ftjob-abc123"})
    assert (waiting.name, waiting.parent_job) == (None, "ftjob-abc123")

    own = SourceJob.from_wire(openai_job | {"model": "my-org/private-model"})
    with pytest.raises(
        InvalidValue, match=r"fine-tunes 'my-org/private-model'.*--map-model my-org/private-model=MODEL"
    ):
        map_base_model(own, {}, {})


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("davinci-002", "is not SOURCE-MODEL=MODEL-HERE"),
        ("davinci-002=no-such-model", "'no-such-model' does not exist"),
    ],
)
def test_a_bad_map_model_is_refused_naming_the_flag(entry: str, said: str) -> None:
    with pytest.raises(InvalidValue, match=said) as err:
        parse_model_map([entry])
    assert err.value.message.startswith("--map-model")
