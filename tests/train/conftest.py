"""Trainers on the tiny random Llama, built the way the job runner builds them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tunehouse.train.config import SFTConfig
from tunehouse.train.recipe import Trainer
from tunehouse.train.sft import sft_trainer


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
