"""Every knob of a supervised fine-tuning run, in one documented dataclass (TRL's config style).

A job's hyperparameters and training options map onto this object; the trainer reads nothing else.
The fields a job's `training` options set take their defaults from the options' declarations
(`options.py`), so no default is written twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunehouse.train.options import config_default


@dataclass
class SFTConfig:
    base_model_dir: Path
    """Hugging Face folder of the base model (config, safetensors, tokenizer)."""
    output_dir: Path
    """Where the final adapter or weights are written."""
    checkpoint_dir: Path
    """Where per-epoch checkpoints are written, one sub-folder per step."""
    n_epochs: int = 3
    batch_size: int = 1
    """Examples per optimizer step. Split into micro-batches of `micro_batch_size`."""
    learning_rate: float = 2e-4
    seed: int = 42
    use_lora: bool = config_default("use_lora")
    """LoRA adapter or full fine-tuning of every weight (`training.adapter`)."""
    init_adapter_dir: Path | None = None
    """Continue training this LoRA adapter (fine-tuning a fine-tuned model) instead of a new one."""
    lora_r: int = config_default("lora_r")
    """LoRA rank (`training.lora_r`)."""
    lora_alpha: int = config_default("lora_alpha")
    """LoRA scale numerator: updates are scaled by lora_alpha / lora_r (`training.lora_alpha`)."""
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str = "all-linear"
    max_length: int = config_default("max_length")
    """Examples longer than this many tokens are truncated (`training.max_length`)."""
    pass_tokens: int | None = None
    """Tokens per forward pass (a step's examples are split into passes of about this many tokens;
    the loss is still normalized over the whole optimizer step). None: chosen from free memory."""
    packing: bool = config_default("packing")
    """Pack several examples per row (no cross-attention, same loss) instead of padding each
    (`training.packing`)."""
    share_prefix: bool | None = config_default("share_prefix")
    """Compute the leading tokens a pass's examples have in common (a repeated system prompt) once
    for all of them (`pack_examples(share_prefix=True)`); the loss and gradients are unchanged.
    None picks it wherever passes run packed in one row (the CPU attention) (`training.share_prefix`)."""
    chunked_loss: bool = True
    """Cross-entropy a chunk of trained positions at a time, never holding vocabulary-wide logits."""
    speed: bool = True
    """The speed wing (`train/speed/`: fused LoRA, norms and MLPs, attention over packed rows,
    compiled kernels). False trains on transformers' and PEFT's own forwards: the same numbers
    (tests/train/speed/test_apply.py), slower."""
    matmul_attention: bool | None = None
    """Attention as plain batched matmuls (`speed/attention.py`) instead of PyTorch's SDPA kernel;
    None picks it on CPUs, where it is faster for training passes."""
    gradient_checkpointing: bool | None = config_default("gradient_checkpointing")
    """Recompute activations in backward; None turns it on only when memory needs it
    (`training.gradient_checkpointing`)."""
    checkpoint_interval: int | None = config_default("checkpoint_interval")
    """Steps between checkpoints; None writes one at the end of every epoch
    (`training.checkpoint_interval`)."""
    resume_from: Path | None = None
    """A checkpoint folder with `trainer_state.pt`: continue that run exactly where it stopped."""
    pause_file: Path | None = None
    """A file whose appearance asks the run to write a checkpoint at the next step boundary and stop
    there (a job's pause); resuming from that checkpoint continues the run exactly."""
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool | None = config_default("bf16")
    """bf16 autocast with fp32 master weights; None picks it when the hardware has fast bf16
    (`training.bf16`)."""
    eval_interval: int | None = None
    """Steps between validation-batch evaluations; None picks about 20 per run."""
    classification_classes: list[str] | None = None
    """Class labels to score the validation set on at the end of every epoch (`train/classify.py`);
    None scores nothing. The job sets them when it asks for classification metrics."""

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
