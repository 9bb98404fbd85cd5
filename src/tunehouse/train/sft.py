"""Supervised fine-tuning recipe: setup → train → save, readable top to bottom (torchtune's shape).

A step is: batch → forward (bf16 autocast where it pays) → masked loss summed over forward passes →
divide by the step's trained tokens → backward → clip → optimizer step → metrics → maybe checkpoint.

The speed tricks are named functions, each tested to change no number it should not:
`pack_examples` (batching.py), `chunked_lm_loss_sum` (loss.py), `frozen_weights_dtype` and
`keep_adapter_inputs_as_is` (precision.py), `plan_memory` (memory.py: pass size and gradient
checkpointing only when needed).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunehouse.models.template import EncodedExample, encode_example
from tunehouse.train.batching import collate, epoch_batches, pack_examples, token_budget_micro_batches
from tunehouse.train.config import SFTConfig
from tunehouse.train.loss import LossSums, chunked_lm_loss_sum, masked_lm_loss_sum
from tunehouse.train.memory import plan_memory
from tunehouse.train.precision import (
    bf16_supported,
    frozen_weights_dtype,
    keep_adapter_inputs_as_is,
    training_device,
)
from tunehouse.train.reporting import Reporter

TRAINER_STATE = "trainer_state.pt"


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


def rng_states() -> dict[str, Any]:
    import numpy as np

    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint: `trainer_state.pt` is written last, so its presence marks one."""
    if not checkpoint_dir.exists():
        return None
    complete = [p for p in checkpoint_dir.glob("step-*") if (p / TRAINER_STATE).exists()]
    return max(complete, key=lambda p: int(p.name.removeprefix("step-")), default=None)


def load_model(config: SFTConfig, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Base model (its weights in `dtype`) plus a new LoRA adapter, a given one, or the checkpoint
    being resumed. Adapters are always fp32: PEFT upcasts them on a bf16 base."""
    resume = config.resume_from
    weights_dir = resume if (resume is not None and not config.use_lora) else config.base_model_dir
    adapter_dir = resume if (resume is not None and config.use_lora) else config.init_adapter_dir
    tokenizer = AutoTokenizer.from_pretrained(str(config.base_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(weights_dir), dtype=dtype)
    model.config.use_cache = False
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
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
        dtype = frozen_weights_dtype(self.use_bf16, config.use_lora)
        self.tokenizer, self.model = load_model(config, self.device, dtype)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self.train = self.encode(train_examples)
        self.valid = self.encode(valid_examples or [])
        self.lengths = [self.example_length(e) for e in self.train]
        self._setup_speed()
        self.steps_per_epoch = math.ceil(len(self.train) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.n_epochs
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        warmup = int(self.total_steps * config.warmup_ratio)
        self.scheduler = _linear_schedule(self.optimizer, warmup, self.total_steps)
        self.eval_interval = config.eval_interval or max(1, self.total_steps // 20)
        self.checkpoint_interval = config.checkpoint_interval or self.steps_per_epoch
        self.state: dict[str, Any] = {
            "step": 0,
            "processed_tokens": 0,
            "loss_tokens": 0,
            "history": [],
            "valid_cursor": 0,
            "elapsed": 0.0,
        }
        n_trainable = sum(p.numel() for p in params)
        self.reporter.message(
            f"Training {len(self.train)} examples for {config.n_epochs} epochs ({self.total_steps} steps, "
            f"batch {config.batch_size}, lr {config.learning_rate:g}, "
            f"{'LoRA r=' + str(config.lora_r) if config.use_lora else 'full fine-tuning'}, "
            f"{n_trainable:,} trainable parameters, {'bf16 autocast' if self.use_bf16 else 'fp32'}"
            f"{', packing' if config.packing else ''}, passes of ≤{self.pass_tokens} tokens"
            f"{', gradient checkpointing' if self.checkpointing else ''} on {self.device.type})"
        )
        if config.resume_from is not None:
            self.restore(config.resume_from)

    def encode(self, examples: list[dict[str, Any]]) -> list[Any]:
        return encode_all(self.tokenizer, examples, self.config.max_length)

    def example_length(self, example: Any) -> int:
        return len(example.input_ids)

    def _setup_speed(self) -> None:
        """Adapter inputs, the forward-pass size and gradient checkpointing, from the hardware."""
        config = self.config
        causal_lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if self.use_bf16 and config.use_lora:
            keep_adapter_inputs_as_is(self.model)
        plan = plan_memory(
            self.model,
            self.device,
            self.use_bf16,
            max(self.lengths, default=1),
            config.gradient_checkpointing,
            config.pass_tokens,
        )
        self.pass_tokens, self.checkpointing = plan.pass_tokens, plan.gradient_checkpointing
        if self.checkpointing:
            causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # The chunked loss takes the decoder's hidden states and the output layer's weight directly.
        head = causal_lm.get_output_embeddings()
        self.decoder = causal_lm.get_decoder() if config.chunked_loss else None
        self.head_weight = head.weight if (type(head) is torch.nn.Linear and head.bias is None) else None
        if self.head_weight is None:
            self.decoder = None

    # --- one forward over a set of examples: summed masked loss -----------------------------------
    def _forward_sums(self, examples: list[EncodedExample]) -> LossSums:
        if self.config.packing:
            batch = pack_examples(examples, self.pad_id)
            inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
        else:
            batch = collate(examples, self.pad_id)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        labels = batch["labels"].to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            if self.decoder is not None:
                hidden = self.decoder(**inputs).last_hidden_state
            else:
                logits = self.model(**inputs).logits
        if self.decoder is not None:
            dtype = torch.bfloat16 if self.use_bf16 else torch.float32
            return chunked_lm_loss_sum(hidden, labels, self.head_weight, dtype)
        return masked_lm_loss_sum(logits, labels)

    def step_loss_tokens(self, indices: list[int]) -> int:
        return sum(self.train[i].trained_tokens for i in indices)

    def accumulate_gradients(self, indices: list[int]) -> dict[str, float]:
        """Forward and backward over one step's examples, a pass at a time, normalized by the step's
        trained tokens — so how the step is split into passes changes no gradient (PITFALLS 4)."""
        step_tokens = self.step_loss_tokens(indices)
        loss_total, correct_total = 0.0, 0
        for one_pass in token_budget_micro_batches(indices, self.lengths, self.pass_tokens):
            sums = self._forward_sums([self.train[i] for i in one_pass])
            (sums.loss_sum / step_tokens).backward()
            loss_total += float(sums.loss_sum.detach())
            correct_total += sums.correct
        return {"train_loss": loss_total / step_tokens, "train_mean_token_accuracy": correct_total / step_tokens}

    def train_step(self, indices: list[int]) -> dict[str, float]:
        self.model.train()
        metrics = self.accumulate_gradients(indices)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return metrics

    @torch.no_grad()
    def evaluate(self, examples: list[Any]) -> tuple[float, float]:
        self.model.eval()
        loss_total, correct_total, tokens_total = 0.0, 0, 0
        lengths = [len(e.input_ids) for e in examples]
        for one_pass in token_budget_micro_batches(list(range(len(examples))), lengths, self.pass_tokens):
            sums = self._forward_sums([examples[i] for i in one_pass])
            loss_total += float(sums.loss_sum)
            correct_total += sums.correct
            tokens_total += sums.tokens
        return loss_total / max(1, tokens_total), correct_total / max(1, tokens_total)

    # --- the loop ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config, state = self.config, self.state
        started = time.perf_counter() - state["elapsed"]
        metrics: dict[str, Any] = state["history"][-1] if state["history"] else {}
        for epoch in range(config.n_epochs):
            for position, indices in enumerate(epoch_batches(self.lengths, config.batch_size, config.seed, epoch)):
                step = epoch * self.steps_per_epoch + position + 1
                if step <= state["step"]:  # done before the run was interrupted
                    continue
                metrics = self.train_step(indices)
                state["step"] = step
                state["processed_tokens"] += sum(self.lengths[i] for i in indices)
                state["loss_tokens"] += self.step_loss_tokens(indices)
                if self.valid and (step % self.eval_interval == 0 or step == self.total_steps):
                    cursor = state["valid_cursor"]
                    batch = [self.valid[(cursor + k) % len(self.valid)] for k in range(config.batch_size)]
                    state["valid_cursor"] = cursor + config.batch_size
                    metrics["valid_loss"], metrics["valid_mean_token_accuracy"] = self.evaluate(batch)
                if step % self.steps_per_epoch == 0 and self.valid:
                    metrics["full_valid_loss"], metrics["full_valid_mean_token_accuracy"] = self.evaluate(self.valid)
                state["history"].append({"step": step, **metrics})
                self.reporter.metrics(step, self.total_steps, metrics)
                state["elapsed"] = time.perf_counter() - started
                self.reporter.progress(step, self.total_steps, state["elapsed"] / step)
                if step % self.checkpoint_interval == 0 or step % self.steps_per_epoch == 0:
                    self.save_checkpoint(step, metrics)
        self.save(config.output_dir)
        wall = time.perf_counter() - started
        return TrainResult(
            steps=state["step"],
            trained_tokens=state["processed_tokens"],
            loss_tokens=state["loss_tokens"],
            final_train_loss=float(metrics.get("train_loss", float("nan"))),
            wall_seconds=wall,
            tokens_per_second=state["processed_tokens"] / wall if wall > 0 else 0.0,
            bf16=self.use_bf16,
            history=state["history"],
        )

    # --- saving and resuming -----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """The adapter (or full weights) plus the tokenizer, so the folder serves on its own."""
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    def save_checkpoint(self, step: int, metrics: dict[str, Any]) -> None:
        """Weights or adapter, then optimizer, scheduler, RNG and data position, written last and
        atomically, so a folder with `trainer_state.pt` is always a complete checkpoint."""
        path = self.config.checkpoint_dir / f"step-{step}"
        self.save(path)
        trainer_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_states(),
            "state": self.state,
            "seed": self.config.seed,
            "total_steps": self.total_steps,
        }
        partial = path / (TRAINER_STATE + ".partial")
        torch.save(trainer_state, partial)
        os.replace(partial, path / TRAINER_STATE)
        self.reporter.checkpoint(step, path, {"step": step, **metrics})

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint: its weights were loaded in `load_model`; the rest is here."""
        saved = torch.load(path / TRAINER_STATE, weights_only=False)
        if saved["total_steps"] != self.total_steps or saved["seed"] != self.config.seed:
            raise ValueError(f"checkpoint {path} belongs to a different run")
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        restore_rng_states(saved["rng"])
        self.state = saved["state"]
        self.reporter.message(f"Resumed from the checkpoint at step {self.state['step']}/{self.total_steps}.")


def train_sft(
    config: SFTConfig,
    train_examples: list[dict[str, Any]],
    valid_examples: list[dict[str, Any]] | None,
    reporter: Reporter,
) -> TrainResult:
    trainer = SFTTrainer(config, reporter)
    trainer.setup(train_examples, valid_examples)
    return trainer.run()
