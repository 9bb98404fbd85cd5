"""The wing's door: `speed.apply` says what each module kind got, and the recipe is correct without
any of it: the same run with the wing off gives the wing's losses and a plain transformers/PEFT
loop's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.train.conftest import varied_chat_rows
from tunehouse.models.template import IGNORE_INDEX
from tunehouse.train.batching import epoch_batches
from tunehouse.train.recipe import Trainer, seed_everything
from tunehouse.train.sft import encode_all
from tunehouse.train.speed import SpeedReport


def plain_losses(model_dir: Path, rows: list[dict[str, Any]], epochs: int, batch_size: int) -> list[float]:
    """The run `make_trainer` sets up, written with transformers and PEFT alone: each example its own
    forward pass, the loss summed over its trained tokens, a step's divided by all of the step's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seed, learning_rate = 7, 1e-3
    seed_everything(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    examples = encode_all(tokenizer, rows, 2048)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    lengths = [len(e.input_ids) for e in examples]
    total = len(epoch_batches(lengths, batch_size, seed, 0)) * epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (total - step) / total)
    losses = []
    model.train()
    for epoch in range(epochs):
        for indices in epoch_batches(lengths, batch_size, seed, epoch):
            trained = sum(examples[i].trained_tokens for i in indices)
            step_loss = 0.0
            for i in indices:
                logits = model(input_ids=torch.tensor([examples[i].input_ids])).logits[0, :-1]
                targets = torch.tensor(examples[i].labels[1:])
                keep = targets != IGNORE_INDEX
                loss = F.cross_entropy(logits[keep], targets[keep], reduction="sum")
                (loss / trained).backward()
                step_loss += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss / trained)
    return losses


def test_the_recipe_is_correct_without_the_speed_wing(
    make_trainer: Callable[..., Trainer], tiny_model_dir: Path
) -> None:
    """Two epochs of 12 chats in fp32: the wing on, the wing off (`SFTConfig.speed`), and a plain
    transformers/PEFT loop give the same losses at every step."""
    rows = varied_chat_rows(12)
    for row in rows:  # a system prompt every example shares, so passes compute it once with the wing
        row["messages"][0]["content"] = "You are a careful assistant who answers in one sentence, always."
    on, off = make_trainer(rows, n_epochs=2), make_trainer(rows, n_epochs=2, speed=False)
    assert on.speed.matmul_attention and on.share_prefix and on.speed.report != SpeedReport()
    assert not off.speed.matmul_attention and not off.share_prefix and off.speed.report == SpeedReport()
    with_wing = [h["train_loss"] for h in on.run().history]
    without = [h["train_loss"] for h in off.run().history]
    assert len(with_wing) == 6
    assert without == pytest.approx(with_wing, rel=1e-5)
    assert without == pytest.approx(plain_losses(tiny_model_dir, rows, epochs=2, batch_size=4), rel=1e-5)


def test_apply_says_what_each_module_kind_got(make_trainer: Callable[..., Trainer]) -> None:
    """The tiny Llama (2 layers) under LoRA in fp32 on a CPU, and the same with the wing off; the
    trainer's start message says it."""
    trainer = make_trainer()
    if trainer.device.type != "cpu":
        pytest.skip("the CPU's attention")
    assert trainer.speed.report == SpeedReport(
        attention="packed rows in plain matmuls, rotary fused (2)",
        norm="fused RMSNorm (5)",  # two per layer and the final one
        mlp="fused SwiGLU (2)",
        lora="shared-input LoRA (14)",  # seven adapted projections per layer
        kernels="unused (bf16 on a CPU only)",
    )
    assert f"Speed wing: {trainer.speed.report}." in trainer.reporter.messages[0]  # type: ignore[attr-defined]  # the tests' QuietReporter
    off = make_trainer(speed=False)
    assert off.speed.report.as_dict() == dict.fromkeys(("attention", "norm", "mlp", "lora"), "the model's own") | {
        "kernels": "unused"
    }
    assert "Speed wing: off." in off.reporter.messages[0]  # type: ignore[attr-defined]  # the tests' QuietReporter
    assert not any("forward" in m.__dict__ for m in off.model.modules())  # nothing switched
