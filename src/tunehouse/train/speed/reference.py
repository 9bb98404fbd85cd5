"""Each fused op's reference arithmetic, in eager PyTorch: what `kernels.py` compiles, and what the
tests hold the compiled kernels and the fused layers to.

The compiled libraries are named by a hash of this module's source (and of how it is traced), so a
change here rebuilds them and a change anywhere else does not. Keep it to the arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LlamaRMSNorm on `[tokens, hidden]`: `weight · (x · rstd).to(x.dtype)`, and `rstd` (fp32)."""
    x32 = x.float()
    rstd = torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)
    return (x32 * rstd).to(x.dtype) * weight, rstd


def norm_output(x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """`norm_forward`'s output again, from what the norm keeps for backward."""
    return (x.float() * rstd).to(x.dtype) * weight


def norm_input_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """The gradient of `norm_forward` with respect to `x` (the weight's is not asked for: frozen).

    d/dx of x·rstd(x) is `s − x·rstd²·mean(s·x)` with `s = rstd·d`; `d = grad · weight` is rounded
    to `x`'s dtype first, as autograd rounds the gradient of the narrowing copy."""
    d = (grad * weight).float()
    x32 = x.float()
    scaled = d * rstd
    coefficient = (scaled * x32).mean(-1, keepdim=True) * rstd.square()
    return (scaled - x32 * coefficient).to(x.dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) · up`, the input of a SwiGLU MLP's down projection."""
    return F.silu(gate) * up


def swiglu_grads(d_h: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """From `swiglu`'s output gradient: the gradients of `gate` and `up`, and `swiglu`'s output
    again (a LoRA down projection's A gradient needs it)."""
    # silu and its derivative in fp32 from one exponential, as PyTorch's own kernels compute them
    # for bf16 (`x / (1 + e^-x)`, and `σ · (1 + x · (1 − σ))` with `σ = 1 / (1 + e^-x)`); the
    # decomposition the compiler would use instead rounds each step to bf16 and takes e^-x twice
    x = gate.float()
    denominator = 1 + torch.exp(-x)
    silu_gate = (x / denominator).to(gate.dtype)
    sigmoid = 1 / denominator
    d_gate = ((d_h * up).float() * sigmoid * (1 + x * (1 - sigmoid))).to(gate.dtype)
    return d_gate, d_h * silu_gate, silu_gate * up


def attention_probabilities(scores: torch.Tensor, bias: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """`softmax(scores + bias)` again in attention's backward, from the log-sum-exp `lse` the fused
    forward returns: one pass, `exp(scores + bias − lse)`, where softmax takes three (maximum, sum,
    quotient) after the bias's own. `scores [rows, heads, queries, keys]`, `bias [rows, 1, queries,
    keys]`, `lse [rows, heads, queries, 1]`; computed in fp32 (float64 for float64 scores)."""
    wide = torch.float64 if scores.dtype == torch.float64 else torch.float32
    return torch.exp(scores.to(wide) + bias.to(wide) - lse.to(wide)).to(scores.dtype)


def rows_of(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A packed pass's tokens `x [tokens, heads, d]` gathered into attention's rows, `[rows, heads,
    width, d]`: slot `(r, w)` holds token `index[r, w]`, or zeros where that is negative."""
    slots = torch.where((index >= 0)[:, :, None, None], x[index.clamp(min=0)], 0)
    return slots.permute(0, 2, 1, 3).contiguous()


def tokens_of(rows: torch.Tensor, row: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """`rows_of`'s inverse: token `t` of `[rows, heads, width, d]` from slot `(row[t], column[t])`,
    `[tokens, heads, d]`."""
    return rows.permute(0, 2, 1, 3)[row, column]


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)


def rope_rows(x: torch.Tensor, index: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`rows_of(x, index)` with the rotary embedding applied: `x · cos + [x2, x1] · sin` per slot,
    `cos` and `sin [rows, width, d]`, `sin` signed as `[−sin1, sin2]` (transformers' `x · cos +
    rotate_half(x) · sin`), in fp32 and rounded once."""
    slots = x[index].float()
    out = slots * cos[:, :, None].float() + _swap_halves(slots) * sin[:, :, None].float()
    return out.to(x.dtype).permute(0, 2, 1, 3).contiguous()


def rope_tokens_back(
    rows: torch.Tensor, row: torch.Tensor, column: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """The gradient of `rope_rows` back to the tokens: `tokens_of(rows, row, column)` rotated back,
    `g · cos + [g2, g1] · sin` with `cos` and `sin [tokens, d]`, `sin` signed as `[sin2, −sin1]`."""
    slots = tokens_of(rows, row, column).float()
    return (slots * cos[:, None].float() + _swap_halves(slots) * sin[:, None].float()).to(rows.dtype)
