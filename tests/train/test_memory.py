"""The memory plan: pass size and gradient checkpointing only when needed, the oneDNN caches bounded."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from tests.train.conftest import assert_same_gradients, gradients
from tunehouse.errors import OutOfMemoryRisk
from tunehouse.train import memory
from tunehouse.train.recipe import Trainer

BF16 = torch.bfloat16


def test_memory_plan_turns_on_checkpointing_then_refuses(
    make_trainer: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer()
    model, device = trainer.model, torch.device("cpu")
    roomy = memory.plan_memory(model, device, bf16=False, longest_example=200)
    assert not roomy.gradient_checkpointing and 200 <= roomy.pass_tokens <= memory.CPU_PASS_TOKENS
    fixed = memory.model_state_bytes(model)
    per_token = memory.activation_bytes_per_token(model.config, bf16=False, checkpointing=False)
    monkeypatch.setattr(memory, "available_memory", lambda _: int((fixed + 100 * per_token) / 0.6))
    tight = memory.plan_memory(model, device, bf16=False, longest_example=200)
    assert tight.gradient_checkpointing and tight.pass_tokens >= 200
    monkeypatch.setattr(memory, "available_memory", lambda _: fixed)
    with pytest.raises(OutOfMemoryRisk, match="Lower training.max_length"):
        memory.plan_memory(model, device, bf16=False, longest_example=200)


def test_gradient_checkpointing_changes_no_gradient(make_trainer: Callable[..., Trainer]) -> None:
    plain = make_trainer(gradient_checkpointing=False)
    checkpointed = make_trainer(gradient_checkpointing=True)
    assert checkpointed.checkpointing and not plain.checkpointing
    assert_same_gradients(gradients(plain, [0, 1, 2]), gradients(checkpointed, [0, 1, 2]))


def test_cpu_training_bounds_onednn_kernel_caches_unless_the_user_set_them(
    make_trainer: Callable[..., Trainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in memory.KERNEL_CACHE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    if make_trainer().device.type != "cpu":
        pytest.skip("oneDNN runs the CPU's matmuls only")
    for variable in memory.KERNEL_CACHE_VARIABLES:
        assert os.environ[variable] == str(memory.ONEDNN_PRIMITIVE_CACHE_CAPACITY)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "512")
    make_trainer()
    assert os.environ["LRU_CACHE_CAPACITY"] == "512"
