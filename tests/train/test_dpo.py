"""DPO: after training on preference pairs the model prefers the preferred outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from openai import OpenAI

from tests.conftest import TINY_ID
from tests.support import upload_rows, wait_for_job
from tunehouse.train.dpo import DPOConfig, dpo_loss, dpo_trainer
from tunehouse.train.recipe import Trainer

from .conftest import QuietReporter


def preference_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"What colour is item {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"Item {i} is {['red', 'blue'][i % 2]}."}],
            "non_preferred_output": [{"role": "assistant", "content": "I cannot say anything about that."}],
        }
        for i in range(n)
    ]


def mean_margin(trainer: Trainer) -> tuple[float, float]:
    """Mean of (policy − reference) log-ratio of chosen minus rejected, and preference accuracy."""
    pairs = trainer.train
    with torch.no_grad():
        policy_c, policy_r = trainer.method.pair_logprobs(trainer, trainer.model, pairs)
        with trainer.method.reference_model(trainer) as reference:
            ref_c, ref_r = trainer.method.pair_logprobs(trainer, reference, pairs)
    margin = (policy_c - ref_c) - (policy_r - ref_r)
    return float(margin.mean()), float((margin > 0).float().mean())


def test_dpo_loss_is_log2_at_the_reference_and_falls_as_the_margin_grows() -> None:
    zero = torch.zeros(2)
    loss, _ = dpo_loss(zero, zero, zero, zero, beta=0.1)
    torch.testing.assert_close(loss, torch.full((2,), 0.6931), atol=1e-4, rtol=0)
    better, won = dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), torch.zeros(1), torch.zeros(1), beta=0.5)
    assert float(better) < 0.6931 and bool(won)


def test_dpo_training_moves_preference_towards_the_preferred_output(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = DPOConfig(
        base_model_dir=tiny_model_dir,
        output_dir=tmp_path / "out",
        checkpoint_dir=tmp_path / "checkpoints",
        n_epochs=3,
        batch_size=4,
        learning_rate=5e-3,
        seed=3,
        beta=0.1,
        bf16=False,
    )
    trainer = dpo_trainer(config, QuietReporter())
    trainer.setup(preference_rows(12), preference_rows(4))
    # Prompt tokens are context; only each output (and its end-of-turn) is trained.
    pair = trainer.train[0]
    assert pair.chosen.input_ids[:5] == pair.rejected.input_ids[:5]
    assert 0 < pair.chosen.trained_tokens < len(pair.chosen.input_ids)
    before, _ = mean_margin(trainer)
    assert abs(before) < 1e-5  # a fresh LoRA adapter is the reference
    result = trainer.run()
    after, accuracy = mean_margin(trainer)
    assert after > 1.0 and accuracy == 1.0
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert "valid_loss" in result.history[-1]


def test_dpo_job_through_the_api(client: OpenAI, tmp_path: Path) -> None:
    train = upload_rows(client, tmp_path, preference_rows(12), "prefs.jsonl")
    job = client.fine_tuning.jobs.create(
        model=TINY_ID,
        training_file=train,
        seed=5,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2, "batch_size": 4}}},
    )
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.method.dpo.hyperparameters.beta == 0.2
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert [m["step"] for m in metrics] == [6, 5, 4, 3, 2, 1]
    reply = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "What colour is item 1?"}], max_tokens=5
    )
    assert reply.choices[0].message.content is not None
