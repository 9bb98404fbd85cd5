"""The dtype the fused layers compute in, and the cast copies of adapter weights kept between optimizer steps."""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a custom autograd Function computes `x`'s products in, forward and backward alike:
    autocast's where it is on (backward runs outside autocast, so it must be told), else `x`'s own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


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
            module.cast_input_dtype_enabled = False
            switched += 1
    return switched


_CASTS: WeakIdKeyDictionary = WeakIdKeyDictionary()
_GENERATION = [0]


def weights_changed() -> None:
    """Forget every copy `weights_as` keeps: called after each optimizer step (fused optimizers
    update weights in place without moving their version counters)."""
    _GENERATION[0] += 1


def weights_as(dtype: torch.dtype, *weights: torch.Tensor) -> torch.Tensor:
    """`weights` in `dtype`, concatenated along the first dimension when there are several.

    The fp32 LoRA weights of a bf16 run were cast in every layer, forward and backward, of every
    pass: about 2,200 small copies per pass on SmolLM2, ~20 ms of fixed cost. The copy is kept until
    a weight changes: an in-place update that moves its version counter, or `weights_changed`
    (the trainers call it after each optimizer step).
    """
    if len(weights) == 1 and weights[0].dtype == dtype:
        return weights[0]
    key = (_GENERATION[0], dtype, tuple((id(w), w._version) for w in weights))
    cached = _CASTS.get(weights[0])
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        result = (torch.cat(weights) if len(weights) > 1 else weights[0]).to(dtype)
    _CASTS[weights[0]] = (key, result)
    return result
