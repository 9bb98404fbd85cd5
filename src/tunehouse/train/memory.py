"""Memory estimate before training (PITFALLS 9): choose the forward-pass size and whether gradient
checkpointing is needed, or fail early saying what to lower.

Per token, a decoder layer keeps at most about `(16·hidden + 6·intermediate)` activation values for
backward (attention projections, norms, MLP gates; no attention score matrix is kept). The speed
wing's fused norms and SwiGLU (`speed/fused_layers.py`) keep less — about `(10·hidden +
3·intermediate)` on SmolLM2 — so the estimate has headroom for the freed temporaries the allocator
holds on to. With gradient checkpointing a layer keeps only its input (`hidden` values) and
recomputes the rest, for about a third more compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from tunehouse.errors import OutOfMemoryRisk

CPU_PASS_TOKENS = 4096
"""Most tokens per forward pass on CPU: matmuls of a few hundred rows already run at full speed."""
CPU_ACTIVATION_BYTES = 9 * 2**27
"""Activation memory (as estimated here) one CPU forward pass may use, before the free-memory check:
1.125 GiB, about 1,080 SmolLM2 tokens. A pass has a fixed cost (~0.25 s on a 2-core AVX-512/AMX
CPU: ~37,000 operator calls and every weight read twice), so fewer passes are faster, but resident
memory grows faster than the estimate past this size. Measured on the training bench: passes of
≤1,083 tokens instead of ≤962 take 45 passes instead of 54 over three epochs, ~5 % faster in an
A/B, for +0.04 GB peak RSS (1.75–1.76 against 1.71–1.73 GB); ≤1,280 tokens gave 1.91–1.95 GB."""
CUDA_PASS_TOKENS = 32768
ONEDNN_PRIMITIVE_CACHE_CAPACITY = 128
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
"""oneDNN's own kernel cache, and the one PyTorch's oneDNN wrapper (ideep) keeps for its matmuls."""


@dataclass(frozen=True)
class MemoryPlan:
    pass_tokens: int
    gradient_checkpointing: bool
    estimated_bytes: int
    available_bytes: int


def bound_onednn_kernel_cache() -> None:
    """Keep at most 128 compiled CPU matmul kernels in each of the two caches that hold them
    (`KERNEL_CACHE_VARIABLES`; both default to 1,024), unless the user set the variable.

    oneDNN compiles a kernel ("primitive") for each matmul shape and keeps it with its buffers, and
    PyTorch's ideep wrapper keeps another cache of them. Packed passes have new shapes nearly every
    step, so both fill with kernels that never run again:
    - oneDNN's: memory in use after each step grew by 15-47 MB on the training bench, and peak RSS
      was ~0.1 GB higher than with 128 entries, at the same speed (8 entries cost 25 % of the
      speed, as the kernels of one pass no longer fit);
    - ideep's: memory in use grew by 10-25 MB a step, ~190 MB over the bench's 8 steps, and peak
      RSS was 0.05-0.12 GB higher than with 128 entries, at the same speed.
    Both libraries read their variable when they create their first kernel, so this runs before
    the training process's first CPU matmul.
    """
    for variable in KERNEL_CACHE_VARIABLES:
        os.environ.setdefault(variable, str(ONEDNN_PRIMITIVE_CACHE_CAPACITY))


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def activation_bytes_per_token(model_config: Any, bf16: bool, checkpointing: bool) -> int:
    hidden = int(model_config.hidden_size)
    intermediate = int(getattr(model_config, "intermediate_size", 4 * hidden))
    layers = int(model_config.num_hidden_layers)
    value_bytes = 2 if bf16 else 4
    per_layer = hidden * 4 if checkpointing else (16 * hidden + 6 * intermediate) * value_bytes
    return layers * per_layer + hidden * 4 * 4  # plus embeddings, final norm and loss inputs


def model_state_bytes(model: torch.nn.Module) -> int:
    """Weights, plus gradients and AdamW's two moments (fp32) for the trainable ones."""
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return weights + trainable * 4 * 3


def plan_memory(
    model: torch.nn.Module,
    device: torch.device,
    bf16: bool,
    longest_example: int,
    requested_checkpointing: bool | None = None,
    requested_pass_tokens: int | None = None,
    budget_fraction: float = 0.6,
    model_shards: int = 1,
) -> MemoryPlan:
    """Fit the model, optimizer state and one forward pass's activations in `budget_fraction` of
    the free memory; turn gradient checkpointing on only if they do not fit without it.
    `model_shards`: over how many GPUs FSDP splits the weights, gradients and optimizer state."""
    fixed = model_state_bytes(model) // model_shards
    available = available_memory(device)
    budget = int(available * budget_fraction) - fixed
    pass_tokens = requested_pass_tokens or (CUDA_PASS_TOKENS if device.type == "cuda" else CPU_PASS_TOKENS)
    config = model.config
    options = [requested_checkpointing] if requested_checkpointing is not None else [False, True]
    for checkpointing in options:
        per_token = activation_bytes_per_token(config, bf16, checkpointing)
        tokens = pass_tokens
        if device.type == "cpu" and not requested_pass_tokens:
            tokens = min(tokens, max(256, CPU_ACTIVATION_BYTES // per_token))
        while tokens > longest_example and tokens * per_token > budget:
            tokens //= 2
        tokens = max(tokens, longest_example)  # an example is never split across passes
        if tokens * per_token <= budget or checkpointing is options[-1]:
            estimate = fixed + tokens * per_token
            if estimate > available * budget_fraction and not requested_pass_tokens:
                raise OutOfMemoryRisk(
                    f"Training needs about {estimate / 2**30:.1f} GiB but only {available / 2**30:.1f} GiB "
                    f"is free. Lower training.max_length (longest example: {longest_example} tokens), use "
                    "LoRA instead of full fine-tuning, or free memory."
                )
            return MemoryPlan(tokens, checkpointing, estimate, available)
    raise AssertionError("unreachable")
