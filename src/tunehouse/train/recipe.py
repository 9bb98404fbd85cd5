"""The training recipe: setup → train → save, readable top to bottom (torchtune's shape).

A step is: batch → forward passes (bf16 autocast where it pays) → the method's loss summed over the
passes → divided by the step's normalizer → backward → clip → optimizer step → metrics → maybe
checkpoint. What differs between methods — how examples are encoded and measured, a pass's loss and
what a step's loss is divided by — is a `Method` the trainer is given (`sft.py`, `dpo.py`), not a
subclass: the recipe is composed, never overridden (torchtune's rule).

The recipe's own speed tricks are named functions, each tested to change no number it should not:
`pack_examples` (batching.py; with `share_prefix`, a repeated system prompt computed once per pass),
`chunked_lm_loss_sum` (loss.py), `frozen_weights_dtype` (precision.py), `plan_memory` (memory.py:
pass size and gradient checkpointing only when needed). The patches over transformers and PEFT
(fused LoRA, norms and MLPs, CPU attention over packed rows, compiled kernels) are one optional
wing, `speed/`, entered once by `speed.apply` in `_setup_speed`; the recipe is correct without it
(`SFTConfig.speed`).

Several processes (`distributed.py`) run the same recipe: each trains its shard of every step's
examples, the loss is still normalized over the whole step, and the gradients and metrics are those
of one process (up to float summation order). Only the main process reports and writes.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunehouse.hardware import bf16_supported
from tunehouse.models.template import EncodedExample
from tunehouse.train import speed
from tunehouse.train.batching import collate, epoch_batches, pack_examples, packed_inputs, token_budget_micro_batches
from tunehouse.train.classify import SCORES_KEY, ValidationClassifier
from tunehouse.train.config import SFTConfig
from tunehouse.train.distributed import ForwardPass, SingleProcess, causal_lm, from_environment
from tunehouse.train.loss import ChunkBuffers, LossSums
from tunehouse.train.memory import bound_onednn_kernel_cache, plan_memory
from tunehouse.train.precision import frozen_weights_dtype
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
    """The training loop's time, checkpoints included and the final save not (the training bench
    compares it with TRL's `trainer.train()`, which saves nothing)."""
    tokens_per_second: float
    bf16: bool
    history: list[dict[str, Any]]
    paused: bool = False
    """The run stopped early at `config.pause_file`'s request, after a checkpoint at `steps`; nothing
    was saved to `output_dir`."""


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
    model: Any = AutoModelForCausalLM.from_pretrained(str(weights_dir), dtype=dtype)  # or PEFT's wrapper, below
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


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class PassOutput:
    """One forward pass: the model's output and, on the device, what a method's loss reads beside it."""

    output: Any
    labels: torch.Tensor
    segment_ids: torch.Tensor | None
    """Which packed example each position belongs to (None when the examples were padded)."""
    computed_tokens: int
    """Tokens the pass ran: padding included, a shared prefix once."""


class Method(Protocol):
    """What a training method adds to the recipe. The trainer calls these and nothing else of it."""

    full_logits: bool
    """The loss needs every position's logits (no chunked loss over the decoder's hidden states)."""
    shards_weights: bool
    """Full fine-tuning may shard its weights over GPUs (FSDP); False keeps a whole copy each (DDP)."""

    def encode(self, tokenizer: Any, examples: list[dict[str, Any]], max_length: int) -> list[Any]:
        """The examples as the method trains them; those with nothing to train are dropped."""
        ...

    def length(self, example: Any) -> int:
        """Tokens a forward pass computes for one encoded example."""
        ...

    def trained_tokens(self, example: Any) -> int:
        """Tokens of one encoded example the loss is computed on."""
        ...

    def normalizer(self, examples: list[Any]) -> int:
        """What the summed loss of a step over `examples` is divided by."""
        ...

    def prepare(self, trainer: Trainer) -> None:
        """Last set-up once the model is loaded and sped up (a frozen reference model, say)."""
        ...

    def pass_sums(self, trainer: Trainer, examples: list[Any]) -> LossSums:
        """One forward pass over `examples`: the loss summed over them, hits and what they count."""
        ...


class Trainer:
    """One training run of `config` with `method`, reporting to `reporter` (see the module's docstring)."""

    def __init__(
        self, config: SFTConfig, method: Method, reporter: Reporter, processes: SingleProcess | None = None
    ) -> None:
        self.config = config
        self.method = method
        self.reporter = reporter
        self.processes = processes or from_environment()
        self.device = self.processes.device
        if self.device.type == "cpu":
            bound_onednn_kernel_cache()
        self.use_bf16 = bf16_supported(self.device) if config.bf16 is None else config.bf16
        # Full fine-tuning over several GPUs shards weights, gradients and optimizer state (FSDP).
        self.shard_weights = (
            method.shards_weights
            and self.processes.world_size > 1
            and self.device.type == "cuda"
            and not config.use_lora
        )

    # --- setup -----------------------------------------------------------------------------------
    def setup(self, train_examples: list[dict[str, Any]], valid_examples: list[dict[str, Any]] | None) -> None:
        config, method = self.config, self.method
        seed_everything(config.seed)
        dtype = frozen_weights_dtype(self.use_bf16, config.use_lora)
        # Under FSDP the whole model stays on the CPU; each GPU receives its shard when wrapped.
        load_device = torch.device("cpu") if self.shard_weights else self.device
        self.tokenizer, self.model = load_model(config, load_device, dtype)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self.train = self.encode(train_examples)
        self.valid = self.encode(valid_examples or [])
        self.classifier = (
            ValidationClassifier(
                self.tokenizer, config.classification_classes, valid_examples, config.max_length, self.reporter
            )
            if config.classification_classes and valid_examples
            else None
        )
        self.lengths = [method.length(e) for e in self.train]
        self._setup_speed()
        self.forward = self.processes.prepare(ForwardPass(self.model, self.decoder is not None), self.shard_weights)
        self.steps_per_epoch = math.ceil(len(self.train) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.n_epochs
        params = [p for p in self.forward.parameters() if p.requires_grad]
        # The fused kernel updates every tensor in one call; the default on CPU loops over them in
        # Python (a LoRA adapter has 420 tensors on SmolLM2: 32 ms a step against 6 ms fused).
        self.optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
        )
        # the copies of the adapter weights that the speed wing's layers keep are stale after a step
        self.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: self.speed.weights_changed())
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
            f"{', packing' if config.packing else ''}"
            f"{', common prefixes computed once' if self.share_prefix else ''}, passes of ≤{self.pass_tokens} tokens"
            f"{', gradient checkpointing' if self.checkpointing else ''} on {self.device.type}"
            f"{self.processes.describe(self.shard_weights)}). Speed wing: {self.speed.report if config.speed else 'off'}."
        )
        if config.resume_from is not None:
            self.restore(config.resume_from)

    def encode(self, examples: list[dict[str, Any]]) -> list[Any]:
        return self.method.encode(self.tokenizer, examples, self.config.max_length)

    def _setup_speed(self) -> None:
        """The speed wing (`speed.apply`, switched off by `config.speed`), the forward-pass size and
        gradient checkpointing, from the hardware."""
        config = self.config
        base = causal_lm(self.model)
        self.speed = speed.apply(
            self.model,
            device=self.device,
            bf16=self.use_bf16,
            lora=config.use_lora,
            matmul_attention=config.matmul_attention,
            enabled=config.speed,
        )
        self.share_prefix = config.packing and self.speed.shares_prefixes and config.share_prefix is not False
        plan = plan_memory(
            self.model,
            self.device,
            self.use_bf16,
            max(self.lengths, default=1),
            config.gradient_checkpointing,
            config.pass_tokens,
            model_shards=self.processes.world_size if self.shard_weights else 1,
        )
        self.pass_tokens, self.checkpointing = plan.pass_tokens, plan.gradient_checkpointing
        if self.checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # The chunked loss takes the decoder's hidden states and the output layer's weight directly
        # (not under FSDP, where that weight is a shard outside the wrapped forward).
        head = base.get_output_embeddings()
        chunked = config.chunked_loss and not self.shard_weights and not self.method.full_logits
        self.decoder = base.get_decoder() if chunked else None
        self.head_weight = head.weight if (type(head) is torch.nn.Linear and head.bias is None) else None
        if self.head_weight is None:
            self.decoder = None
        self.chunk_buffers = ChunkBuffers()
        self.computed_tokens = 0
        """Tokens this process's training passes ran in this run (see `LossSums.computed_tokens`)."""
        self.method.prepare(self)

    # --- one forward pass over a set of examples -------------------------------------------------
    def forward_pass(self, model: Any, examples: list[EncodedExample], packed: bool) -> PassOutput:
        """`model` on `examples` packed into rows (or padded, one per row), under the run's autocast."""
        if packed:
            one_row = self.speed.matmul_attention  # the wing's attention lays the examples out in rows
            batch = pack_examples(examples, self.pad_id, one_row=one_row, share_prefix=self.share_prefix)
            inputs = packed_inputs(batch)
        else:
            batch = collate(examples, self.pad_id)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        # the packer's example boundaries go to the wing's attention with this pass, and only it
        extra = self.speed.pass_inputs(batch.get("packed_row"))
        with (
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16),
            self.speed.pass_context(),
        ):
            output = model(**inputs, **extra)
        segment_ids = batch.get("segment_ids")
        return PassOutput(
            output=output,
            labels=batch["labels"].to(self.device),
            segment_ids=None if segment_ids is None else segment_ids.to(self.device),
            computed_tokens=inputs["input_ids"].numel(),
        )

    def step_loss_tokens(self, indices: list[int]) -> int:
        return sum(self.method.trained_tokens(self.train[i]) for i in indices)

    def process_passes(self, indices: list[int], lengths: list[int]) -> list[tuple[list[int], bool]]:
        """This process's forward passes over its shard of `indices`, each with whether it counts.

        Every process runs as many passes as the busiest one (FSDP gathers weights in each forward
        and DDP syncs buffers; a process with no examples must still join the gradient all-reduce):
        the extra passes repeat the step's first example and are weighted zero.
        """
        passes = token_budget_micro_batches(self.processes.shard(indices), lengths, self.pass_tokens)
        fillers = [indices[:1]] * (self.processes.most(len(passes)) - len(passes))
        return [(p, True) for p in passes] + [(p, False) for p in fillers]

    def accumulate_gradients(self, indices: list[int]) -> dict[str, float]:
        """Forward and backward over one step's examples, a pass at a time, normalized by the whole
        step's trained tokens — so how the step is split into passes, or over processes, changes no
        gradient (PITFALLS 4). DDP averages the processes' gradients; multiplying each process's
        loss by their number makes that average the one-process sum."""
        normalizer = self.method.normalizer([self.train[i] for i in indices])
        passes = self.process_passes(indices, self.lengths)
        correct_total: float  # an integer count until the processes' sum
        loss_total, correct_total = 0.0, 0
        for number, (one_pass, counts) in enumerate(passes):
            with self.processes.no_sync(self.forward, sync=number == len(passes) - 1):
                sums = self.method.pass_sums(self, [self.train[i] for i in one_pass])
                weight = self.processes.world_size if counts else 0.0
                (sums.loss_sum * weight / normalizer).backward()
            if counts:
                loss_total += float(sums.loss_sum.detach())
                correct_total += sums.correct
                self.computed_tokens += sums.computed_tokens
        loss_total, correct_total = self.processes.sum([loss_total, correct_total])
        return {"train_loss": loss_total / normalizer, "train_mean_token_accuracy": correct_total / normalizer}

    def train_step(self, indices: list[int]) -> dict[str, float]:
        self.forward.train()
        metrics = self.accumulate_gradients(indices)
        self.processes.clip_grad_norm(self.forward, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return metrics

    @torch.no_grad()
    def evaluate(self, examples: list[Any]) -> tuple[float, float]:
        """Mean loss and accuracy over `examples`, each process evaluating its shard of them."""
        self.forward.eval()
        correct_total: float  # integer counts until the processes' sum
        count_total: float
        loss_total, correct_total, count_total = 0.0, 0, 0
        lengths = [self.method.length(e) for e in examples]
        for one_pass, counts in self.process_passes(list(range(len(examples))), lengths):
            sums = self.method.pass_sums(self, [examples[i] for i in one_pass])
            if counts:
                loss_total += float(sums.loss_sum)
                correct_total += sums.correct
                count_total += sums.tokens
        loss_total, correct_total, count_total = self.processes.sum([loss_total, correct_total, count_total])
        return loss_total / max(1, count_total), correct_total / max(1, count_total)

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
                metrics = {**self.train_step(indices)}  # the epoch's end adds the class scores
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
                    if self.classifier is not None:
                        metrics[SCORES_KEY] = self.classifier.score(self)
                state["history"].append({"step": step, **metrics})
                self.reporter.metrics(step, self.total_steps, metrics)
                state["elapsed"] = time.perf_counter() - started
                self.reporter.progress(step, self.total_steps, state["elapsed"] / step)
                checkpointed = step % self.checkpoint_interval == 0 or step % self.steps_per_epoch == 0
                if checkpointed:
                    self.save_checkpoint(step, metrics)
                if step < self.total_steps and self.pause_requested():
                    if not checkpointed:
                        self.save_checkpoint(step, metrics)
                    return self._result(metrics, time.perf_counter() - started, paused=True)
        wall = time.perf_counter() - started  # the training loop's: the final save is not training
        self.save(config.output_dir)
        return self._result(metrics, wall)

    def pause_requested(self) -> bool:
        """Whether `config.pause_file` exists; every process answers as one, so all stop at one step."""
        pause_file = self.config.pause_file
        if pause_file is None:  # the same config in every process: none of them asks the others
            return False
        asked = pause_file.exists()
        if self.processes.world_size > 1:
            return self.processes.sum([1.0 if asked else 0.0])[0] > 0
        return asked

    def _result(self, metrics: dict[str, Any], wall: float, paused: bool = False) -> TrainResult:
        state = self.state
        return TrainResult(
            steps=state["step"],
            trained_tokens=state["processed_tokens"],
            loss_tokens=state["loss_tokens"],
            final_train_loss=float(metrics.get("train_loss", float("nan"))),
            wall_seconds=wall,
            tokens_per_second=state["processed_tokens"] / wall if wall > 0 else 0.0,
            bf16=self.use_bf16,
            history=state["history"],
            paused=paused,
        )

    # --- saving and resuming -----------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """The adapter (or full weights) plus the tokenizer, so the folder serves on its own.

        Every process calls it (FSDP gathers the weights from all of them); the main one writes and
        the others wait for it, so no process runs ahead of a save.
        """
        state_dict = self.processes.full_state_dict(self.forward)
        if self.processes.is_main:
            path.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(str(path), **({} if state_dict is None else {"state_dict": state_dict}))
            self.tokenizer.save_pretrained(str(path))
        self.processes.barrier()

    def save_checkpoint(self, step: int, metrics: dict[str, Any]) -> None:
        """Weights or adapter, then optimizer, scheduler, RNG and data position, written last and
        atomically, so a folder with `trainer_state.pt` is always a complete checkpoint.

        Several processes hold the same optimizer state under DDP (the main one saves it); under
        FSDP each holds a shard, saved per process first. RNG states are the main process's: with
        the default zero dropout, training draws no random numbers after setup.
        """
        path = self.config.checkpoint_dir / f"step-{step}"
        self.save(path)
        if self.shard_weights:
            torch.save(self.optimizer.state_dict(), path / f"optimizer-{self.processes.rank}.pt")
            self.processes.barrier()
        if self.processes.is_main:
            trainer_state = {
                "optimizer": None if self.shard_weights else self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_states(),
                "state": self.state,
                "seed": self.config.seed,
                "total_steps": self.total_steps,
                "processes": self.processes.world_size,
            }
            partial = path / (TRAINER_STATE + ".partial")
            torch.save(trainer_state, partial)
            os.replace(partial, path / TRAINER_STATE)
            self.reporter.checkpoint(step, path, {"step": step, **metrics})
        self.processes.barrier()

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint: its weights were loaded in `load_model`; the rest is here."""
        saved = torch.load(path / TRAINER_STATE, weights_only=False)
        if saved["total_steps"] != self.total_steps or saved["seed"] != self.config.seed:
            raise ValueError(f"checkpoint {path} belongs to a different run")
        optimizer = saved["optimizer"]
        if optimizer is None:  # sharded by FSDP: this process's shard, from as many processes
            if saved["processes"] != self.processes.world_size:
                raise ValueError(
                    f"checkpoint {path} was written by {saved['processes']} processes; resume with as many"
                )
            optimizer = torch.load(path / f"optimizer-{self.processes.rank}.pt", weights_only=False)
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(saved["scheduler"])
        restore_rng_states(saved["rng"])
        self.state = saved["state"]
        self.reporter.message(f"Resumed from the checkpoint at step {self.state['step']}/{self.total_steps}.")


def train(
    config: SFTConfig,
    method: Method,
    train_examples: list[dict[str, Any]],
    valid_examples: list[dict[str, Any]] | None,
    reporter: Reporter,
    processes: SingleProcess | None = None,
) -> TrainResult:
    """Set up a `Trainer` and run it to the end: the whole of a job's training."""
    trainer = Trainer(config, method, reporter, processes)
    trainer.setup(train_examples, valid_examples)
    return trainer.run()
