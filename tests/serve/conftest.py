"""The serving tests' fixtures: an engine in-process over a home with the tiny model and a LoRA
fine-tune of it registered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_ID, make_home
from tunehouse.models import catalog
from tunehouse.serve.engine import Engine

FT_ID = f"ft:{TINY_ID}:tunehouse:lora:abcd1234"


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter for the tiny model with non-zero weights, so it changes what the model says."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    target = tmp_path_factory.mktemp("lora")
    get_peft_model(model, config).save_pretrained(str(target))
    return target


@pytest.fixture
def engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shipped_model_dir: Path, tiny_model_dir: Path, lora_dir: Path
) -> Iterator[Engine]:
    """A fresh engine over a home with the tiny model and a LoRA fine-tune of it registered."""
    monkeypatch.setenv("TUNEHOUSE_HOME", str(make_home(tmp_path / "home", shipped_model_dir)))
    catalog.register_base_model(TINY_ID, tiny_model_dir)
    adapter = tmp_path / "adapter"  # deleting the model removes its folder: give it its own copy
    adapter.mkdir()
    for file in lora_dir.iterdir():
        (adapter / file.name).write_bytes(file.read_bytes())
    catalog.register_trained_model(
        FT_ID, kind="fine-tuned", path=adapter, base_model=TINY_ID, adapter=True, job_id="ftjob-test"
    )
    monkeypatch.setenv("TUNEHOUSE_MAX_QUEUED_GENERATIONS", "2")
    engine = Engine()
    yield engine
    engine.close()
