"""RMSNorm as an autograd Function that keeps its input (bf16 under autocast) and one fp32 factor per
token, and whose output the layers reading it can recompute instead of keeping.

Each decoder layer's two norms feed adapted projections (Q, K, V; gate and up) whose LoRA weight
gradients need the norm's output: kept by them, it is `hidden` more values per token twice a layer,
while the norm already keeps everything it takes to recompute it with two element-wise multiplies.

The norm → LoRA protocol (the LoRA end is `fused_lora._SharedInputLora`): the norm's output tensor
carries how it was computed (`NormedInput`, under the attribute `NORMED_INPUT`), and a layer that
reads it asks `normed_input_of(x)` and keeps that instead of `x`. The recipe travels with the
tensor, so no state is kept between calls and a layer handed any other tensor keeps it as usual.

In bf16 on a CPU, the forward, the recomputation and the input's gradient each run as one compiled
kernel (`reference.norm_forward` and the others) instead of eight to twelve tensor operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunehouse.train.speed.kernels import kernel_for


@dataclass(frozen=True)
class NormedInput:
    """What an RMSNorm output is computed from: its input, weight and per-token factor."""

    x: torch.Tensor
    weight: torch.Tensor
    rstd: torch.Tensor

    def recompute(self) -> torch.Tensor:
        """The norm's output, bit for bit: `x · rstd` in fp32, rounded to `x`'s dtype, times the
        weight. `x` is widened before the product, which is the same arithmetic as the mixed-dtype
        product but faster: PyTorch's CPU loops over mixed dtypes are not vectorized."""
        fused = kernel_for("norm_output", self.x, self.weight)
        if fused is not None:
            return fused(self.x, self.weight, self.rstd)
        normed = _normalized(self.x, self.rstd)
        return normed.mul_(self.weight) if self.weight.dtype == normed.dtype else self.weight * normed


def _normalized(x: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """`(x · rstd).to(x.dtype)`, computed on an fp32 copy of `x` (see `NormedInput.recompute`)."""
    return x.to(rstd.dtype, copy=True).mul_(rstd).to(x.dtype)


NORMED_INPUT = "tunehouse_normed_input"
"""The attribute of an `RMSNormFunction` output that holds its `NormedInput`."""


def normed_input_of(tensor: torch.Tensor) -> NormedInput | None:
    """How `tensor` was computed, if it is an `RMSNormFunction` output (see the module docstring)."""
    return getattr(tensor, NORMED_INPUT, None)


class RMSNormFunction(torch.autograd.Function):
    """`weight * (x · rsqrt(mean(x²) + eps)).to(x.dtype)` with the statistics in fp32; its output can
    be recomputed from what it keeps, and says how (`normed_input_of`)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        fused = kernel_for("norm_forward", x, weight)
        if fused is not None:
            out, rstd = fused(x, weight, torch.tensor(eps))
            recipe = NormedInput(x, weight, rstd)
        else:
            stats_dtype = torch.promote_types(x.dtype, torch.float32)
            squares = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=stats_dtype).square_()
            recipe = NormedInput(x, weight, squares.div_(x.shape[-1]).add_(eps).rsqrt_())
            out = recipe.recompute()
        ctx.save_for_backward(x, weight, recipe.rstd)
        setattr(out, NORMED_INPUT, recipe)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, rstd = ctx.saved_tensors
        d_x = d_weight = None
        if ctx.needs_input_grad[1]:
            d_weight = (grad * _normalized(x, rstd)).sum_to_size(weight.shape).to(weight.dtype)
        fused = kernel_for("norm_input_grad", grad, x, weight)
        if ctx.needs_input_grad[0] and fused is not None:
            d_x = fused(grad, x, weight, rstd)
        elif ctx.needs_input_grad[0]:
            d_normed = (grad * weight).to(x.dtype)  # the gradient autograd would round to x's dtype
            # d/dx of x·rstd(x): rstd·d − x·rstd³·mean(d·x) = s − x·rstd²·mean(s·x) with s = rstd·d,
            # in fp32 on widened copies, in place (mixed-dtype loops are not vectorized)
            x32 = x.to(rstd.dtype, copy=True)
            scaled = d_normed.to(rstd.dtype, copy=True).mul_(rstd)
            coefficient = (scaled * x32).sum(-1, keepdim=True).mul_(rstd.square()).div_(x.shape[-1])
            d_x = scaled.sub_(x32.mul_(coefficient)).to(x.dtype)
        return d_x, d_weight, None
