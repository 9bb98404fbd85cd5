"""bf16 for training: which weights are stored in it."""

from __future__ import annotations

import torch


def frozen_weights_dtype(bf16: bool, use_lora: bool) -> torch.dtype:
    """bf16 for the frozen base of a LoRA run under bf16 autocast, else fp32.

    Autocast would cast every fp32 weight to bf16 on every call anyway; storing the frozen base in
    bf16 saves those casts, half the weights' memory, and keeps the residual stream in bf16 so no
    activation is copied between dtypes around each linear layer. The trainable LoRA weights stay
    fp32 master weights (PEFT keeps adapters fp32 on a bf16 base). Full fine-tuning keeps every
    weight fp32: they are its master weights.
    """
    return torch.bfloat16 if (bf16 and use_lora) else torch.float32
