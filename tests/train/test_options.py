"""The `training.*` options: one declaration that the request check, the trainer's config, the API
description and README's table all follow."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tunehouse.api.fine_tuning.protocol import CreateJobRequest
from tunehouse.errors import InvalidRequest, InvalidValue
from tunehouse.train.config import SFTConfig
from tunehouse.train.options import (
    OPTIONS_BY_NAME,
    TRAINING_OPTIONS,
    check_training_options,
    config_values,
    options_table,
    with_options_table,
)

README = Path(__file__).resolve().parents[2] / "README.md"
CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(SFTConfig)}


@pytest.mark.parametrize("option", TRAINING_OPTIONS, ids=lambda o: o.name)
def test_sft_config_defaults_are_the_declared_ones(option: Any) -> None:
    if option.config_field is None:
        assert option.name in ("processes", "device")  # read by the worker, not the trainer
        return
    assert CONFIG_FIELDS[option.config_field].default == option.config_value(option.default)


def test_options_map_onto_their_config_fields() -> None:
    values = config_values({"adapter": "full", "lora_r": 8, "packing": False, "bf16": False, "processes": 2})
    assert values["use_lora"] is False
    assert values["lora_r"] == 8 and values["packing"] is False and values["bf16"] is False
    assert "processes" not in values


def test_sft_config_has_no_catch_all_field() -> None:
    assert "extra" not in CONFIG_FIELDS


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"adapter": "full"},
        {"lora_r": 1, "lora_alpha": 4096, "max_length": 16},
        {"lora_r": 1024, "max_length": 131_072},
        {"checkpoint_interval": None, "gradient_checkpointing": None, "share_prefix": None, "bf16": None},
        {"checkpoint_interval": 10**6, "gradient_checkpointing": True, "packing": False, "bf16": False},
        {"processes": 1},
        {"processes": 64},
        {"processes": None},
    ],
)
def test_allowed_values_pass(values: dict[str, Any]) -> None:
    check_training_options(values)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("adapter", "qlora", '"lora" or "full"'),
        ("adapter", None, '"lora" or "full"'),
        ("lora_r", -4, "an integer from 1 to 1024"),
        ("lora_r", 10**9, "an integer from 1 to 1024"),
        ("lora_r", 16.0, "an integer from 1 to 1024"),
        ("lora_r", True, "an integer from 1 to 1024"),
        ("lora_alpha", "x", "an integer from 1 to 4096"),
        ("lora_alpha", 0, "an integer from 1 to 4096"),
        ("max_length", -1, "an integer from 16 to 131072"),
        ("max_length", float("nan"), "an integer from 16 to 131072"),
        ("checkpoint_interval", 0, "an integer of at least 1 or null"),
        ("packing", None, "true or false"),
        ("packing", 1, "true or false"),
        ("bf16", "yes", "true, false or null"),
        ("processes", 1000, "an integer from 1 to 64 or null"),
        ("processes", 0, "an integer from 1 to 64 or null"),
    ],
)
def test_values_outside_the_declaration_are_refused_naming_the_option(name: str, value: Any, says: str) -> None:
    with pytest.raises(InvalidValue) as err:
        check_training_options({name: value})
    assert err.value.param == f"training.{name}"
    assert says in err.value.message


def test_unknown_options_are_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        check_training_options({"lora_dropout": 0.1})
    assert err.value.param == "training"
    assert "lora_dropout" in err.value.message


def test_readme_holds_the_rendered_table() -> None:
    readme = README.read_text()
    assert options_table() in readme
    assert with_options_table(readme) == readme, "run `python -m tunehouse.train.options README.md`"


def test_the_api_describes_every_option() -> None:
    description = CreateJobRequest.model_fields["training"].description or ""
    for option in TRAINING_OPTIONS:
        assert f"{option.name}: {option.allowed}" in description


def test_the_job_runner_gives_the_trainer_the_declared_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunehouse.jobs.run import build_config
    from tunehouse.models.catalog import register_base_model
    from tunehouse.store.schema import JobRow

    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path / "home"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    register_base_model("options-model", folder)

    def config_for(options: dict[str, Any]) -> SFTConfig:
        job = JobRow(
            id="ftjob-options",
            model="options-model",
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto"}}},
            training_options=options,
            seed=1,
        )
        return build_config(job, 20)[0]

    defaults = config_for({})
    for option in TRAINING_OPTIONS:
        if option.config_field is not None:
            assert getattr(defaults, option.config_field) == option.config_value(option.default)
    assert defaults.learning_rate == pytest.approx(2e-4)  # LoRA's base rate

    chosen = config_for({"adapter": "full", "lora_r": 4, "max_length": 64, "packing": False, "processes": 1})
    assert (chosen.use_lora, chosen.lora_r, chosen.max_length, chosen.packing) == (False, 4, 64, False)
    assert chosen.learning_rate == pytest.approx(2e-5)  # full fine-tuning's base rate
    assert OPTIONS_BY_NAME["lora_alpha"].default == chosen.lora_alpha
