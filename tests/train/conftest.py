"""Shared by the train tests: trainers on the tiny random Llama, built the way the job runner builds
them, their gradients, masks of packed passes, both attention forwards, and the compiled kernels."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tunehouse.train.config import SFTConfig
from tunehouse.train.recipe import Trainer
from tunehouse.train.sft import sft_trainer
from tunehouse.train.speed import attention, kernels


class QuietReporter:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.steps: list[dict[str, Any]] = []
        self.checkpoints: list[int] = []

    def message(self, text: str, level: str = "info") -> None:
        self.messages.append(text)

    def metrics(self, step: int, total_steps: int, data: dict[str, Any]) -> None:
        self.steps.append({"step": step, **data})

    def checkpoint(self, step: int, path: Path, metrics: dict[str, Any]) -> None:
        self.checkpoints.append(step)

    def progress(self, step: int, total_steps: int, seconds_per_step: float) -> None:
        pass


def varied_chat_rows(n: int) -> list[dict[str, Any]]:
    """Conversations of different lengths, so packing and length grouping have something to do."""
    colours = ["red", "green", "blue", "yellow"]
    return [
        {
            "messages": [
                {"role": "system", "content": "You answer briefly." + " Really." * (i % 5)},
                {"role": "user", "content": f"What is the colour of item {i}?" + " Please tell me." * (i % 3)},
                {"role": "assistant", "content": f"Item {i} is {colours[i % 4]}." + " Quite so." * (i % 4)},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture
def make_trainer(tiny_model_dir: Path, tmp_path: Path) -> Callable[..., Trainer]:
    def make(rows: list[dict[str, Any]] | None = None, **overrides: Any) -> Trainer:
        values: dict[str, Any] = {
            "base_model_dir": tiny_model_dir,
            "output_dir": tmp_path / "out",
            "checkpoint_dir": tmp_path / "checkpoints",
            "n_epochs": 1,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "seed": 7,
            "bf16": False,
            **overrides,
        }
        trainer = sft_trainer(SFTConfig(**values), QuietReporter())
        trainer.setup(rows if rows is not None else varied_chat_rows(12), None)
        return trainer

    return make


def shared_prefix_mask(prefix: int, lengths: list[int]) -> torch.Tensor:
    """`[1, 1, L, L]`: `pack_examples(share_prefix=True)`'s mask for examples of `lengths` after it."""
    ids = torch.cat([torch.full((prefix,), -2)] + [torch.full((n,), i) for i, n in enumerate(lengths)])
    causal = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    return (causal & ((ids[:, None] == ids[None, :]) | (ids[None, :] == -2)))[None, None]


def gradients(trainer: Trainer, indices: list[int]) -> dict[str, torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    trainer.accumulate_gradients(indices)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def assert_same_gradients(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=tol, atol=tol, msg=name)


@pytest.fixture(params=[True, False], ids=["fused-forward", "matmul-forward"])
def forward_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both forwards of the matmul attention on any machine: SDPA's fused kernel (chosen where the
    CPU has AMX) and the batched matmuls (elsewhere); the backward is the same for both."""
    monkeypatch.setattr(attention, "cpu_has_amx", lambda: request.param)
    return bool(request.param)


@pytest.fixture(scope="module")
def built() -> Iterator[None]:
    """The libraries in the kernels directory, built there if `make install` has not (a minute).
    A machine without a C++ compiler cannot build them: those tests skip, saying why."""
    try:
        kernels.build()
    except Exception as error:  # what the compiler or AOTInductor raised
        pytest.skip(f"the CPU kernels cannot be built here: {type(error).__name__}: {error}")
    kernels.kernel.cache_clear()
    missing = [name for name in kernels.KERNELS if kernels.kernel(name) is None]
    assert not missing, f"built but not loadable: {missing}"
    yield
    kernels.kernel.cache_clear()
