"""LoRA layers' forward with the adapter's product added inside its last matmul.

PEFT computes `base(x) + lora_B(lora_A(x)) * scaling`: a full-width multiply and a full-width add
after the matmuls, and in backward another full-width multiply of the gradient by `scaling`; on
a CPU those element-wise passes over `tokens × out_features` cost as much as a small matmul each.
`addmm(base(x), lora_A(x), lora_Bᵀ, alpha=scaling)` gives the same sum with no element-wise pass
in either direction: the scaling rides on the rank-r sides of the product.

Every plain adapted layer runs as one autograd Function, `_SharedInputLora`, which adds the
adapter's product in place into the base matmul's fresh output and, in backward, sums the input's
gradient from the base and the adapter inside the matmuls (`addmm_`) instead of by autograd's
separate adds and copies. Sibling layers that a decoder calls one after another on the same input
(Q, K and V; gate and up) run together in it: one matmul for all their adapters' A. The first
sibling called computes all of them; the others, called next with the same input tensor, take
their result. The adapters' weights in the compute dtype (and the groups' A matrices
concatenated) are kept from one pass to the next until the optimizer changes them (`WeightCasts`
in `casts.py`). Where their input is an RMSNorm's output, backward recomputes it instead of keeping
it (the LoRA end of `rms_norm.py`'s protocol).

Only the plain case is fused (one active adapter, not merged, no dropout, no DoRA or other variant,
a `nn.Linear` base with frozen weights); any other call runs PEFT's own forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F

from tunehouse.train.speed.casts import WeightCasts, compute_dtype
from tunehouse.train.speed.rms_norm import NormedInput, normed_input_of

SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Names of sibling layers that transformers' decoders call one after another on one input."""


def plain_adapter(layer: Any) -> str | None:
    """The name of `layer`'s one active adapter if it is the plain case fused here, else None."""
    adapters = layer.active_adapters
    base = layer.base_layer
    plain = (
        not layer.disable_adapters
        and not layer.merged
        and len(adapters) == 1
        and adapters[0] in layer.lora_A
        and adapters[0] not in layer.lora_variant
        and isinstance(layer.lora_dropout[adapters[0]], torch.nn.Identity)
        and layer.lora_B[adapters[0]].bias is None
        and type(base) is torch.nn.Linear
        and not base.weight.requires_grad
        and (base.bias is None or not base.bias.requires_grad)
    )
    return adapters[0] if plain else None


class _SharedInputLora(torch.autograd.Function):
    """`base_i(x) + (x · A_iᵀ) · B_iᵀ · scaling_i` for k adapted layers reading the same `x`, the A
    matrices concatenated (one matmul); `weights` are the k A matrices, then the k B matrices,
    the k frozen bases' weights and their biases. Matmuls run in the autocast dtype where autocast
    is on, as autocast would run them; backward, which runs outside autocast, uses the same dtype.
    The adapter weights' copies in that dtype are kept from one pass to the next (`casts`)."""

    @staticmethod
    def forward(
        ctx: Any, casts: WeightCasts, scalings: tuple[float, ...], x: torch.Tensor, *weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        k = len(scalings)
        lora_as, lora_bs = weights[:k], weights[k : 2 * k]
        bases, biases = weights[2 * k : 3 * k], weights[3 * k :]
        dtype = compute_dtype(x)
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        low = torch.mm(x2, casts(dtype, *lora_as).t())  # type: ignore[arg-type]  # A matrices: never None
        outs, start = [], 0
        for b, w, bias, scaling in zip(lora_bs, bases, biases, scalings, strict=True):
            assert b is not None and w is not None
            rank = b.shape[1]
            out = F.linear(x2, w.to(dtype), None if bias is None else bias.to(dtype))
            out.addmm_(low[:, start : start + rank], casts(dtype, b).t(), alpha=scaling)  # in place
            outs.append(out.view(*x.shape[:-1], -1))
            start += rank
        # an RMSNorm's output is recomputed from what the norm keeps anyway, rather than kept (the
        # LoRA end of rms_norm.py's protocol)
        recipe = normed_input_of(x)
        inputs = (x2,) if recipe is None else (recipe.x, recipe.weight, recipe.rstd)
        ctx.save_for_backward(low, *lora_as, *lora_bs, *bases, *inputs)
        ctx.casts, ctx.scalings, ctx.x_shape, ctx.x_dtype = casts, scalings, x.shape, x.dtype
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        low, *weights = ctx.saved_tensors
        k = len(ctx.scalings)
        lora_as, lora_bs, bases, inputs = weights[:k], weights[k : 2 * k], weights[2 * k : 3 * k], weights[3 * k :]
        dtype, casts = low.dtype, ctx.casts
        x = inputs[0] if len(inputs) == 1 else NormedInput(*inputs).recompute()
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        need_input_grad = ctx.needs_input_grad[2]  # x's: not in the first layer, under frozen embeddings
        d_lows, d_bs = [], []
        d_x: torch.Tensor | None = None
        start = 0
        for grad, b, w, scaling in zip(grads, lora_bs, bases, ctx.scalings, strict=True):
            rank = b.shape[1]
            g = grad.reshape(-1, grad.shape[-1]).to(dtype)
            d_lows.append(torch.mm(g, casts(dtype, b)).mul_(scaling))
            d_bs.append(torch.mm(g.t(), low[:, start : start + rank]).mul_(scaling).to(b.dtype))
            if need_input_grad:
                d_x = torch.mm(g, w.to(dtype)) if d_x is None else d_x.addmm_(g, w.to(dtype))
            start += rank
        d_low = torch.cat(d_lows, dim=1) if k > 1 else d_lows[0]
        d_a = torch.mm(d_low.t(), x2).split([a.shape[0] for a in lora_as])
        d_as = [part.to(a.dtype) for part, a in zip(d_a, lora_as, strict=True)]
        if d_x is not None:
            d_x = d_x.addmm_(d_low, casts(dtype, *lora_as)).view(ctx.x_shape).to(ctx.x_dtype)
        return None, None, d_x, *d_as, *d_bs, *([None] * (2 * k))


def _adapted_outputs(
    layers: tuple[Any, ...], names: list[str], x: torch.Tensor, casts: WeightCasts
) -> tuple[torch.Tensor, ...]:
    """`_SharedInputLora` over `layers` (each the plain case, its adapter `names[i]`) on `x`."""
    pairs = list(zip(layers, names, strict=True))
    return _SharedInputLora.apply(
        casts,
        tuple(layer.scaling[name] for layer, name in pairs),
        x,
        *(layer.lora_A[name].weight for layer, name in pairs),
        *(layer.lora_B[name].weight for layer, name in pairs),
        *(layer.base_layer.weight for layer in layers),
        *(layer.base_layer.bias for layer in layers),
    )


@dataclass
class _SharedInput:
    """Adapted layers called on one input (siblings, or a layer on its own), the trainer's weight
    casts, and the results computed ahead for the later layers: `id(layer) → (input, output)`."""

    layers: tuple[Any, ...]
    casts: WeightCasts
    ahead: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def forward_all(self, x: torch.Tensor) -> torch.Tensor | None:
        """All the layers' outputs on `x`; returns the first's and keeps the others' for their calls.
        None if some layer is not the plain case."""
        names = [name for layer in self.layers if (name := plain_adapter(layer)) is not None]
        if len(names) != len(self.layers):
            return None
        outs = _adapted_outputs(self.layers, names, x, self.casts)
        self.ahead = {id(layer): (x, out) for layer, out in zip(self.layers[1:], outs[1:], strict=True)}
        return outs[0]

    def take(self, layer: Any, x: torch.Tensor) -> torch.Tensor | None:
        """`layer`'s output computed ahead on this very `x`, if there is one."""
        ahead = self.ahead.pop(id(layer), None)
        return ahead[1] if ahead is not None and ahead[0] is x else None


def _fused_forward(
    layer: Any,
    peft_forward: Callable[..., torch.Tensor],
    group: _SharedInput,
    x: torch.Tensor,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor:
    name = plain_adapter(layer) if not args and not kwargs else None
    if name is None:
        return peft_forward(x, *args, **kwargs)
    out = group.forward_all(x) if layer is group.layers[0] else group.take(layer, x)
    return out if out is not None else _adapted_outputs((layer,), [name], x, group.casts)[0]


def _shared_input_groups(model: torch.nn.Module, lora_linear: type, casts: WeightCasts) -> dict[int, _SharedInput]:
    """`id(layer) → its group` for every complete group of `SHARED_INPUT_GROUPS` in `model`."""
    groups: dict[int, _SharedInput] = {}
    for module in model.modules():
        for names in SHARED_INPUT_GROUPS:
            layers = tuple(getattr(module, name, None) for name in names)
            if all(isinstance(layer, lora_linear) for layer in layers):
                group = _SharedInput(layers, casts)
                groups.update({id(layer): group for layer in layers})
    return groups


def fuse_lora_forward(model: torch.nn.Module, casts: WeightCasts) -> int:
    """Give every PEFT LoRA `Linear` of `model` the fused forward, keeping its weight copies in
    `casts`; returns how many were switched."""
    from peft.tuners.lora import Linear as LoraLinear

    groups = _shared_input_groups(model, LoraLinear, casts)
    switched = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and "forward" not in module.__dict__:  # not already switched
            group = groups.get(id(module)) or _SharedInput((module,), casts)
            # this instance's forward becomes the fused one; PEFT's stays on the class
            module.forward = functools.partial(_fused_forward, module, module.forward, group)  # type: ignore[method-assign]
            switched += 1
    return switched


def keep_adapter_inputs_as_is(model: torch.nn.Module) -> int:
    """Stop PEFT copying each activation to the adapter's fp32 dtype before the LoRA matmuls.

    Under bf16 autocast that copy is undone at once (autocast casts it back to bf16 for the
    matmul), so it costs two full-size copies per adapted layer and changes nothing. Returns how
    many adapted layers were switched.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    switched = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            cast(Any, module).cast_input_dtype_enabled = False  # a plain flag that torch types as a tensor
            switched += 1
    return switched
