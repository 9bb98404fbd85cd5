"""Supervised fine-tuning recipe: setup → train → save, readable top to bottom (torchtune's shape).

A step is: batch → forward (bf16 autocast where it pays) → masked loss summed over micro-batches →
divide by the step's trained tokens → backward → clip → optimizer step → metrics → maybe checkpoint.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunehouse.models.template import EncodedExample, encode_example
from tunehouse.train.batching import collate, epoch_batches, micro_batches
from tunehouse.train.config import SFTConfig
from tunehouse.train.loss import masked_lm_loss_sum
from tunehouse.train.precision import bf16_supported, training_device
from tunehouse.train.reporting import Reporter


@dataclass
class TrainResult:
    steps: int
    trained_tokens: int
    """Tokens processed over all epochs (what OpenAI bills as trained tokens)."""
    loss_tokens: int
    """Tokens the loss was computed on over all epochs (assistant / completion tokens)."""
    final_train_loss: float
    wall_seconds: float
    tokens_per_second: float
    bf16: bool
    history: list[dict[str, Any]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass


def load_model(config: SFTConfig, device: torch.device) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(str(config.base_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(config.base_model_dir), dtype=torch.float32)
    model.config.use_cache = False
    if config.init_adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(config.init_adapter_dir), is_trainable=True)
    elif config.use_lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return tokenizer, model.to(device)


def encode_all(tokenizer: Any, examples: list[dict[str, Any]], max_length: int) -> list[EncodedExample]:
    encoded = [encode_example(tokenizer, example, max_length) for example in examples]
    return [e for e in encoded if e.trained_tokens > 0]


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class SFTTrainer:
    def __init__(self, config: SFTConfig, reporter: Reporter) -> None:
        self.config = config
        self.reporter = reporter
        self.device = training_device()
        self.use_bf16 = bf16_supported(self.device) if config.bf16 is None else config.bf16

    # --- setup -----------------------------------------------------------------------------------
    def setup(self, train_examples: list[dict[str, Any]], valid_examples: list[dict[str, Any]] | None) -> None:
        config = self.config
        seed_everything(config.seed)
        self.tokenizer, self.model = load_model(config, self.device)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self.train = encode_all(self.tokenizer, train_examples, config.max_length)
        self.valid = encode_all(self.tokenizer, valid_examples or [], config.max_length)
        self.lengths = [len(e.input_ids) for e in self.train]
        self.steps_per_epoch = math.ceil(len(self.train) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.n_epochs
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        warmup = int(self.total_steps * config.warmup_ratio)
        self.scheduler = _linear_schedule(self.optimizer, warmup, self.total_steps)
        self.eval_interval = config.eval_interval or max(1, self.total_steps // 20)
        n_trainable = sum(p.numel() for p in params)
        self.reporter.message(
            f"Training {len(self.train)} examples for {config.n_epochs} epochs ({self.total_steps} steps, "
            f"batch {config.batch_size}, lr {config.learning_rate:g}, "
            f"{'LoRA r=' + str(config.lora_r) if config.use_lora else 'full fine-tuning'}, "
            f"{n_trainable:,} trainable parameters, {'bf16 autocast' if self.use_bf16 else 'fp32'} "
            f"on {self.device.type})"
        )

    # --- one forward/backward over a set of examples -----------------------------------------------
    def _forward_sums(self, examples: list[EncodedExample]) -> tuple[torch.Tensor, int, int]:
        batch = {k: v.to(self.device) for k, v in collate(examples, self.pad_id).items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sums = masked_lm_loss_sum(logits, batch["labels"])
        return sums.loss_sum, sums.correct, sums.tokens

    def train_step(self, indices: list[int]) -> dict[str, float]:
        self.model.train()
        step_tokens = sum(self.train[i].trained_tokens for i in indices)
        loss_total, correct_total = 0.0, 0
        for micro in micro_batches(indices, self.lengths, self.config.micro_batch_size):
            loss_sum, correct, _ = self._forward_sums([self.train[i] for i in micro])
            (loss_sum / step_tokens).backward()
            loss_total += float(loss_sum.detach())
            correct_total += correct
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"train_loss": loss_total / step_tokens, "train_mean_token_accuracy": correct_total / step_tokens}

    @torch.no_grad()
    def evaluate(self, examples: list[EncodedExample]) -> tuple[float, float]:
        self.model.eval()
        loss_total, correct_total, tokens_total = 0.0, 0, 0
        lengths = [len(e.input_ids) for e in examples]
        for micro in micro_batches(list(range(len(examples))), lengths, self.config.micro_batch_size):
            loss_sum, correct, tokens = self._forward_sums([examples[i] for i in micro])
            loss_total += float(loss_sum)
            correct_total += correct
            tokens_total += tokens
        return loss_total / max(1, tokens_total), correct_total / max(1, tokens_total)

    # --- the loop ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config = self.config
        started = time.perf_counter()
        step, processed_tokens, loss_tokens = 0, 0, 0
        history: list[dict[str, Any]] = []
        metrics: dict[str, Any] = {}
        valid_cursor = 0
        for epoch in range(config.n_epochs):
            for indices in epoch_batches(self.lengths, config.batch_size, config.seed, epoch):
                metrics = self.train_step(indices)
                step += 1
                processed_tokens += sum(self.lengths[i] for i in indices)
                loss_tokens += sum(self.train[i].trained_tokens for i in indices)
                if self.valid and (step % self.eval_interval == 0 or step == self.total_steps):
                    batch = [self.valid[(valid_cursor + k) % len(self.valid)] for k in range(config.batch_size)]
                    valid_cursor += config.batch_size
                    metrics["valid_loss"], metrics["valid_mean_token_accuracy"] = self.evaluate(batch)
                if step % self.steps_per_epoch == 0 and self.valid:
                    metrics["full_valid_loss"], metrics["full_valid_mean_token_accuracy"] = self.evaluate(self.valid)
                history.append({"step": step, **metrics})
                self.reporter.metrics(step, self.total_steps, metrics)
                elapsed = time.perf_counter() - started
                self.reporter.progress(step, self.total_steps, elapsed / step)
                if step % self.steps_per_epoch == 0:
                    self.save_checkpoint(step, metrics)
        self.save(config.output_dir)
        wall = time.perf_counter() - started
        return TrainResult(
            steps=step,
            trained_tokens=processed_tokens,
            loss_tokens=loss_tokens,
            final_train_loss=float(metrics.get("train_loss", float("nan"))),
            wall_seconds=wall,
            tokens_per_second=processed_tokens / wall if wall > 0 else 0.0,
            bf16=self.use_bf16,
            history=history,
        )

    # --- saving ------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """The adapter (or full weights) plus the tokenizer, so the folder serves on its own."""
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    def save_checkpoint(self, step: int, metrics: dict[str, Any]) -> None:
        path = self.config.checkpoint_dir / f"step-{step}"
        self.save(path)
        self.reporter.checkpoint(step, path, {"step": step, **metrics})


def train_sft(
    config: SFTConfig,
    train_examples: list[dict[str, Any]],
    valid_examples: list[dict[str, Any]] | None,
    reporter: Reporter,
) -> TrainResult:
    trainer = SFTTrainer(config, reporter)
    trainer.setup(train_examples, valid_examples)
    return trainer.run()
