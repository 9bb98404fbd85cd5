"""Attention for packed sequences that computes only each example's own causal block.

With packing, transformers builds a block-diagonal mask and SDPA then computes the whole
(pack × pack) score matrix, most of it masked: for a pack of four examples, four times the work of
the blocks that matter. Here each example (a run of position ids starting at 0) gets its own causal
SDPA call, so no mask is built and no masked score is computed; the numbers are the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

NAME = "tunehouse_packed_sdpa"


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    position_ids = kwargs.get("position_ids")
    if position_ids is None or query.shape[2] != key.shape[2] or position_ids.shape[-1] != query.shape[2]:
        # not a packed training pass (generation with a cache): plain SDPA with the mask given
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    dropout_p = dropout if module.training else 0.0
    rows = []
    for row in range(query.shape[0]):
        positions = position_ids[row if position_ids.shape[0] > 1 else 0]
        starts = (positions == 0).nonzero().flatten().tolist()
        bounds = sorted({0, *starts, query.shape[2]})
        rows.append(
            torch.cat(
                [
                    F.scaled_dot_product_attention(
                        query[row : row + 1, :, start:end],
                        key[row : row + 1, :, start:end],
                        value[row : row + 1, :, start:end],
                        is_causal=True,
                        scale=scaling,
                        dropout_p=dropout_p,
                    )
                    for start, end in zip(bounds[:-1], bounds[1:], strict=True)
                ],
                dim=2,
            )
        )
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


def use_packed_attention(model: Any) -> None:
    """Switch a transformers model's attention to per-example blocks for packed rows."""
    AttentionInterface.register(NAME, packed_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, _no_mask)
    model.set_attn_implementation(NAME)


@contextmanager
def standard_attention(model: Any) -> Iterator[None]:
    """Within the block the model (and so any config saved from it) uses plain SDPA."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    current = causal_lm.config._attn_implementation
    if current != NAME:
        yield
        return
    causal_lm.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        causal_lm.set_attn_implementation(NAME)
