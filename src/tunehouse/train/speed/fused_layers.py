"""A decoder layer's RMSNorms and SwiGLU as autograd Functions that keep less for backward.

Written as plain tensor code (transformers' `LlamaRMSNorm`, `LlamaMLP`), autograd keeps every
intermediate it might need: an RMSNorm keeps an fp32 copy of its input (twice the bytes of the bf16
residual stream) and runs eight kernels forward and ten back; `silu(gate) * up` keeps `gate`,
`silu(gate)` and `up`, three `intermediate_size`-wide tensors per token. These Functions compute the
same numbers from less: the norm keeps its bf16 input and one fp32 factor per token and mixes dtypes
inside each kernel instead of copying; SwiGLU keeps `gate` and `up` and recomputes `silu(gate)` in
backward: fewer activation bytes per token, and fewer element-wise passes.
The norm's Function is in `rms_norm.py`: the adapted projections that read its output recompute it
from what the norm keeps, rather than keeping it too.
Where the down projection carries a plain LoRA adapter, `_SwiGLUDownLora` runs it too, base and
adapter, so `silu(gate) * up` is not kept for the adapter either, and neither the adapter's sum nor
its gradient's costs a copy or an autograd node of its own.

In bf16 on a CPU, `silu(gate) * up` and its gradients run as one compiled kernel each
(`reference.swiglu`, `reference.swiglu_grads`), bit for bit the same numbers.

Only modules whose forward is transformers' Llama code are switched (Qwen2, Mistral and other
models that copy it included); any other norm or MLP keeps its own forward.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear

from tunehouse.train.speed.casts import WeightCasts, compute_dtype
from tunehouse.train.speed.fused_lora import plain_adapter
from tunehouse.train.speed.kernels import kernel_for
from tunehouse.train.speed.rms_norm import RMSNormFunction


class _SiluMul(torch.autograd.Function):
    """`silu(gate) * up`, recomputing `silu(gate)` in backward instead of keeping it."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        fused = kernel_for("swiglu", gate, up)
        if fused is not None:
            return fused(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        gate, up = ctx.saved_tensors
        fused = kernel_for("swiglu_grads", grad, gate, up)
        if fused is not None:
            d_gate, d_up, _ = fused(grad, gate, up)
            return d_gate, d_up
        d_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        d_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        return d_gate, d_up


class _SwiGLUDownLora(torch.autograd.Function):
    """`down(silu(gate) * up)` for a down projection with a plain LoRA adapter, in one Function:
    `h = silu(gate) * up`, the adapter's `low = h @ Aᵀ`, and `h @ Wᵀ + low @ Bᵀ · scaling` with the
    adapter's product added in place. It keeps only `gate`, `up` and `low`: the matmuls under
    autograd would also keep `h`, another `intermediate_size` values per token, which backward
    recomputes here with one multiply. In backward, `h`'s gradient from the base and from the
    adapter is summed inside one in-place `addmm_`. The adapter's copies in the compute dtype are
    kept in `casts`."""

    @staticmethod
    def forward(
        ctx: Any,
        casts: WeightCasts,
        scaling: float,
        gate: torch.Tensor,
        up: torch.Tensor,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        dtype = compute_dtype(gate)
        gate2, up2 = (t.reshape(-1, t.shape[-1]).to(dtype) for t in (gate, up))
        fused = kernel_for("swiglu", gate2, up2)
        h2 = fused(gate2, up2) if fused is not None else F.silu(gate2).mul_(up2)
        low = torch.mm(h2, casts(dtype, lora_a).t())
        out = F.linear(h2, weight.to(dtype), None if bias is None else bias.to(dtype))
        out.addmm_(low, casts(dtype, lora_b).t(), alpha=scaling)
        ctx.save_for_backward(gate, up, low, lora_a, lora_b, weight)
        ctx.casts, ctx.scaling = casts, scaling
        return out.view(*gate.shape[:-1], -1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        gate, up, low, lora_a, lora_b, weight = ctx.saved_tensors
        dtype, casts, scaling = low.dtype, ctx.casts, ctx.scaling
        gate, up = gate.to(dtype), up.to(dtype)
        g = grad.reshape(-1, grad.shape[-1]).to(dtype)
        a = casts(dtype, lora_a)
        d_low = torch.mm(g, casts(dtype, lora_b)).mul_(scaling)
        d_b = torch.mm(g.t(), low).mul_(scaling).to(lora_b.dtype)
        # the base matmul's gradient of h plus the adapter's, summed in place
        d_h = torch.mm(g, weight.to(dtype)).addmm_(d_low, a).view(up.shape)
        fused = kernel_for("swiglu_grads", d_h, gate, up)
        if fused is not None:
            d_gate, d_up, h = fused(d_h, gate, up)
        else:
            silu_gate = F.silu(gate)
            d_gate, d_up, h = torch.ops.aten.silu_backward(d_h * up, gate), d_h * silu_gate, silu_gate * up
        d_a = torch.mm(d_low.t(), h.reshape(-1, up.shape[-1])).to(lora_a.dtype)
        return None, None, d_gate, d_up, d_a, d_b, None, None


def _rms_norm_forward(norm: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return RMSNormFunction.apply(hidden_states, norm.weight, norm.variance_epsilon)


def _swiglu_forward(mlp: Any, casts: WeightCasts, x: torch.Tensor) -> torch.Tensor:
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    down = mlp.down_proj
    adapter = plain_adapter(down) if isinstance(down, LoraLinear) else None
    if adapter is None:
        return down(_SiluMul.apply(gate, up))
    base = down.base_layer
    return _SwiGLUDownLora.apply(
        casts,
        down.scaling[adapter],
        gate,
        up,
        down.lora_A[adapter].weight,
        down.lora_B[adapter].weight,
        base.weight,
        base.bias,
    )


def same_code(method: Any, reference: Any) -> bool:
    """Whether two functions are the same source (the same bytecode, names and constants)."""
    a, b = method.__code__, reference.__code__
    return (a.co_code, a.co_names, a.co_consts) == (b.co_code, b.co_names, b.co_consts)


def fuse_norms_and_mlps(model: torch.nn.Module, casts: WeightCasts) -> int:
    """Switch every Llama-style RMSNorm and SiLU MLP of `model` to the Functions above (outputs and
    gradients unchanged, see the tests), a down projection's LoRA weight copies kept in `casts`;
    returns how many modules were switched."""
    from transformers.activations import SiLUActivation
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    SILU_MODULES = (torch.nn.SiLU, SiLUActivation)

    switched = 0
    for module in model.modules():
        if "forward" in module.__dict__:  # already switched, or wrapped by someone else
            continue
        forward = type(module).forward
        if same_code(forward, LlamaRMSNorm.forward):
            module.forward = functools.partial(_rms_norm_forward, module)
        elif same_code(forward, LlamaMLP.forward) and isinstance(getattr(module, "act_fn", None), SILU_MODULES):
            module.forward = functools.partial(_swiglu_forward, module, casts)
        else:
            continue
        switched += 1
    return switched
