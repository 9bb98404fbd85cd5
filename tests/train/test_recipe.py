"""The recipe's numbers are pinned: a short SFT and DPO run give the loss curves recorded before the
trainer was restructured into a recipe composed with methods (commit 25f19cb gave these same values,
bit for bit). A change that alters a loss here changed what training computes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.train.conftest import QuietReporter, varied_chat_rows
from tests.train.test_dpo import preference_rows
from tunehouse.hardware import cpu_has_amx, cpu_has_fast_bf16
from tunehouse.train.config import SFTConfig
from tunehouse.train.dpo import DPOConfig, dpo_trainer
from tunehouse.train.recipe import Trainer
from tunehouse.train.sft import sft_trainer

# (train_loss, valid_loss) per step: 12 chats, batch 4, 2 epochs, seed 7, on the tiny random Llama.
SFT_FP32 = [
    (10.781050248579545, 10.701273193359375),
    (10.663803562973484, 10.6492333984375),
    (10.704158238002233, 10.610367431640626),
    (10.565918893525094, 10.58234375),
    (10.630285353887649, 10.564500732421875),
    (10.598573164506393, 10.555706787109376),
]
SFT_BF16_AVX512 = [
    (10.785511363636363, 10.70375),
    (10.662878787878787, 10.655),
    (10.702380952380953, 10.6075),
    (10.567234848484848, 10.57375),
    (10.625, 10.5625),
    (10.586647727272727, 10.55375),
]
DPO_FP32 = [
    0.6931471824645996,
    0.661137580871582,
    0.6341332197189331,
    0.6093060374259949,
    0.5961335897445679,
    0.5856369733810425,
]
DPO_BF16_AVX512 = [
    0.6931471824645996,
    0.6611116528511047,
    0.6344337463378906,
    0.6097168326377869,
    0.5965998768806458,
    0.5857200026512146,
]


def _config(tiny_model_dir: Path, tmp_path: Path, bf16: bool) -> dict[str, Any]:
    return {
        "base_model_dir": tiny_model_dir,
        "output_dir": tmp_path / "out",
        "checkpoint_dir": tmp_path / "checkpoints",
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "seed": 7,
        "bf16": bf16,
    }


def _bf16_or_skip(bf16: bool) -> None:
    # bf16 arithmetic differs between CPU generations (AMX CPUs take another attention forward); the
    # pinned bf16 values are those of an AVX-512 BF16 CPU without AMX (AMD EPYC).
    if bf16 and (cpu_has_amx() or not cpu_has_fast_bf16()):
        pytest.skip("the pinned bf16 losses are those of an AVX-512 BF16 CPU without AMX")


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_sft_run_gives_the_pinned_losses(tiny_model_dir: Path, tmp_path: Path, bf16: bool) -> None:
    _bf16_or_skip(bf16)
    trainer = sft_trainer(SFTConfig(**_config(tiny_model_dir, tmp_path, bf16)), QuietReporter())
    trainer.setup(varied_chat_rows(12), varied_chat_rows(4))
    history = trainer.run().history
    losses = [(row["train_loss"], row["valid_loss"]) for row in history]
    expected = SFT_BF16_AVX512 if bf16 else SFT_FP32
    assert [x for pair in losses for x in pair] == pytest.approx([x for pair in expected for x in pair], rel=1e-5)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_dpo_run_gives_the_pinned_losses(tiny_model_dir: Path, tmp_path: Path, bf16: bool) -> None:
    _bf16_or_skip(bf16)
    trainer = dpo_trainer(DPOConfig(**_config(tiny_model_dir, tmp_path, bf16)), QuietReporter())
    trainer.setup(preference_rows(12), None)
    losses = [row["train_loss"] for row in trainer.run().history]
    assert losses == pytest.approx(DPO_BF16_AVX512 if bf16 else DPO_FP32, rel=1e-5)


def test_same_seed_same_run_and_another_seed_another(make_trainer: Callable[..., Trainer]) -> None:
    def curve(seed: int) -> list[float]:
        trainer = make_trainer(seed=seed, n_epochs=2, batch_size=3)
        return [round(h["train_loss"], 12) for h in trainer.run().history]

    first = curve(5)
    assert first == curve(5)
    assert first != curve(6)
