"""LoRA layers' forward with the adapter's product added inside its last matmul.

PEFT computes `base(x) + lora_B(lora_A(x)) * scaling`: a full-width multiply and a full-width add
after the matmuls, and in backward another full-width multiply of the gradient by `scaling`; on
a CPU those element-wise passes over `tokens × out_features` cost as much as a small matmul each
(about 5 % of a SmolLM2 LoRA step here). `addmm(base(x), lora_A(x), lora_Bᵀ, alpha=scaling)`
gives the same sum with no element-wise pass in either direction: the scaling rides on the
rank-r sides of the product.

Only the plain case is fused (one active adapter, not merged, no dropout, no DoRA or other variant,
a `nn.Linear` base); any other call runs PEFT's own forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def plain_adapter(layer: Any) -> str | None:
    """The name of `layer`'s one active adapter if it is the plain case fused here, else None."""
    adapters = layer.active_adapters
    plain = (
        not layer.disable_adapters
        and not layer.merged
        and len(adapters) == 1
        and adapters[0] in layer.lora_A
        and adapters[0] not in layer.lora_variant
        and isinstance(layer.lora_dropout[adapters[0]], torch.nn.Identity)
        and layer.lora_B[adapters[0]].bias is None
        and type(layer.base_layer) is torch.nn.Linear
    )
    return adapters[0] if plain else None


def add_low_rank(layer: Any, name: str, x: torch.Tensor, low_rank: torch.Tensor) -> torch.Tensor:
    """`base(x) + low_rank @ lora_Bᵀ · scaling`, the sum inside one `addmm`."""
    base = layer.base_layer
    result = F.linear(x, base.weight, base.bias)
    out_features = result.shape[-1]
    fused = torch.addmm(
        result.reshape(-1, out_features),
        low_rank.reshape(-1, low_rank.shape[-1]),
        layer.lora_B[name].weight.t(),
        alpha=layer.scaling[name],
    )
    return fused.view(result.shape)


def _fused_forward(
    layer: Any, peft_forward: Callable[..., torch.Tensor], x: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    name = plain_adapter(layer) if not args and not kwargs else None
    if name is None:
        return peft_forward(x, *args, **kwargs)
    return add_low_rank(layer, name, x, F.linear(x, layer.lora_A[name].weight))


def fuse_lora_forward(model: torch.nn.Module) -> int:
    """Give every PEFT LoRA `Linear` of `model` the fused forward; returns how many were switched."""
    from peft.tuners.lora import Linear as LoraLinear

    switched = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and "forward" not in module.__dict__:  # not already switched
            module.forward = functools.partial(_fused_forward, module, module.forward)
            switched += 1
    return switched
