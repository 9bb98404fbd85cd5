"""The dtype the fused layers compute in, and the cast copies of adapter weights they keep between
optimizer steps."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.weak import WeakIdKeyDictionary


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a custom autograd Function computes `x`'s products in, forward and backward alike:
    autocast's where it is on (backward runs outside autocast, so it must be told), else `x`'s own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class WeightCasts:
    """The fused layers' copies of fp32 adapter weights in the compute dtype (sibling layers' A
    matrices concatenated), kept from one pass to the next: cast in every layer, forward and
    backward, of every pass, they were thousands of small copies per pass.

    One per trainer, owned by its speed wing (`Speedups.casts`) and handed to the fused layers when
    they are switched on. The optimizer → cast protocol: a copy is kept until its weight changes,
    either by an in-place update that moves the weight's version counter or by an optimizer step,
    after which the trainer's optimizer post-step hook calls `weights_changed` (fused optimizers
    update weights in place without moving their version counters).
    """

    def __init__(self) -> None:
        self._copies: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._generation = 0

    def weights_changed(self) -> None:
        """Forget every copy: the optimizer has just updated the weights."""
        self._generation += 1

    def __call__(self, dtype: torch.dtype, *weights: torch.Tensor) -> torch.Tensor:
        """`weights` in `dtype`, concatenated along the first dimension when there are several."""
        if len(weights) == 1 and weights[0].dtype == dtype:
            return weights[0]
        key = (self._generation, dtype, tuple((id(w), w._version) for w in weights))
        kept = self._copies.get(weights[0])
        if kept is not None and kept[0] == key:
            return kept[1]
        with torch.no_grad():
            result = (torch.cat(weights) if len(weights) > 1 else weights[0]).to(dtype)
        self._copies[weights[0]] = (key, result)
        return result

    def __deepcopy__(self, memo: dict[int, Any]) -> WeightCasts:
        """A copy of the model (DPO's frozen reference) shares its trainer's casts: they are keyed
        by the weights themselves."""
        return self
