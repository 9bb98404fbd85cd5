"""A Llama attention layer's rotary embedding and matmul attention over a one-row packed pass, in
one autograd Function.

Between its projections and its output projection, transformers' `LlamaAttention` runs about
twenty tensor operations forward on the queries and keys (views, transposes, the rotary embedding's
multiplies, slices, negation and concatenation) and about thirty back, each a pass over
`tokens × heads × head_dim` values and an autograd node; our CPU attention (`attention.py`) then
gathers the examples into rows and back, whose gradients autograd computes as zero-filled index
additions. `_PackedAttention` does the same arithmetic in a few passes: the examples' tokens are
gathered into rows once, the rotary embedding (with the attention's scaling folded into it for the
queries) is written straight into the layout the attention's matmuls read, and backward gathers
the gradients back to the tokens and rotates them back in one pass each. In bf16 on a CPU those
passes are compiled kernels (`reference.rope_rows` and the others, for heads of 64 or 128): one
loop each for the gather, the rotation and the layout change.

Only the plain case is taken: one row of examples packed end to end, whose boundaries the pass
hands over (`attention.PackedPass`), no KV cache, no dropout, the module's forward being
transformers' Llama code (Qwen2, Mistral and other models that copy it included); any other call
runs the module's own forward.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from tunehouse.train.speed.attention import (
    ATTENTION_NAME,
    PASS_KWARG,
    SEMANTIC_KWARGS,
    Blocks,
    PackedPass,
    RowLayout,
    attend,
    attend_backward,
)
from tunehouse.train.speed.casts import compute_dtype
from tunehouse.train.speed.fused_layers import same_code
from tunehouse.train.speed.kernels import kernel_for


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """transformers' `x · cos + rotate_half(x) · sin` into `out` (any layout), `sin` signed as
    `_signed` gives it: with x = [x1, x2], [x1·cos1 − x2·sin1, x2·cos2 + x1·sin2]."""
    half = x.shape[-1] // 2
    torch.mul(x, cos, out=out)
    out[..., :half].addcmul_(x[..., half:], sin[..., :half])
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out


def _rotate_back(grad: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The gradient of `_rotate` with respect to x, `sin` signed for backward:
    [g1·cos1 + g2·sin2, g2·cos2 − g1·sin1]."""
    half = grad.shape[-1] // 2
    out = grad * cos
    out[..., :half].addcmul_(grad[..., half:], sin[..., :half])
    out[..., half:].addcmul_(grad[..., :half], sin[..., half:])
    return out


@dataclass(frozen=True)
class _PassTables:
    """What every layer of one pass shares: where each token sits in the rows (`row`, `column`),
    where a shared prefix's other copies sit (`shared_row`, `shared_column`), and the rotary
    tables `(cos, sin)` in row order (forward) and token order (backward), `sin` signed for
    each (`_signed`), as they are for the keys and times the attention's scaling for the queries."""

    row: torch.Tensor
    column: torch.Tensor
    shared_row: torch.Tensor
    shared_column: torch.Tensor
    key_rows: tuple[torch.Tensor, torch.Tensor]
    query_rows: tuple[torch.Tensor, torch.Tensor]
    key_tokens: tuple[torch.Tensor, torch.Tensor]
    query_tokens: tuple[torch.Tensor, torch.Tensor]
    output_slots: torch.Tensor
    """`[rows, width]`: the token each slot's output gradient comes from, −1 where none does
    (padding, and the other copies of a shared prefix)."""


def _signed(sin: torch.Tensor, backward: bool) -> torch.Tensor:
    """The rotary `sin` table as `_rotate` reads it, `[−sin1, sin2]`, or as `_rotate_back` does,
    `[sin2, −sin1]`: each half of the output then adds the other half of the input times it."""
    half = sin.shape[-1] // 2
    first, second = sin[..., :half], sin[..., half:]
    return torch.cat([second, -first] if backward else [-first, second], dim=-1)


def _pass_tables(
    packed: PackedPass, layout: RowLayout, cos: torch.Tensor, sin: torch.Tensor, scale: float, dtype: torch.dtype
) -> _PassTables:
    """The pass's tables, computed by its first layer and kept in its `PackedPass` for the others:
    every layer of a pass brings the same layout and, in Llama's code, the same rotary tables."""
    kept = packed.rotary_tables.get((scale, dtype))
    if kept is not None and kept[0] is cos and kept[1] is sin:
        return kept[2]
    width = layout.allowed.shape[-1]
    cos_tokens, sin_tokens = cos[0].to(dtype), sin[0].to(dtype)
    cos_rows = cos_tokens.index_select(0, layout.gather)
    sin_rows = _signed(sin_tokens, backward=False).index_select(0, layout.gather)
    sin_tokens = _signed(sin_tokens, backward=True)
    tables = _PassTables(
        row=layout.scatter // width,
        column=layout.scatter % width,
        shared_row=layout.shared_slots // width,
        shared_column=layout.shared_slots % width,
        key_rows=(cos_rows, sin_rows),
        query_rows=(cos_rows * scale, sin_rows * scale),
        key_tokens=(cos_tokens, sin_tokens),
        query_tokens=(cos_tokens * scale, sin_tokens * scale),
        output_slots=torch.full((layout.gather.numel(),), -1, dtype=torch.long, device=layout.gather.device)
        .index_copy_(0, layout.scatter, torch.arange(len(layout.scatter), device=layout.gather.device))
        .view(-1, width),
    )
    packed.rotary_tables[(scale, dtype)] = (cos, sin, tables)
    return tables


def _token_grads(
    grad: torch.Tensor, tables: _PassTables, layout: RowLayout, rotary: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """The keys' or values' gradient `[rows, kv_heads, width, d]` gathered back to the tokens,
    `[L, kv_heads, d]`: each token's slot, plus the other copies of a shared prefix's tokens; the
    keys' rotated back with their `rotary` table (each copy with its token's: the same rotation,
    so the sum is rotated too)."""

    def at(row: torch.Tensor, column: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        if rotary is None:
            return _tokens_of(grad, row, column)
        table = rotary if tokens is None else (rotary[0][tokens], rotary[1][tokens])
        return _rotated_back_to_tokens(grad, row, column, table)

    result = at(tables.row, tables.column, None)
    if layout.shared_tokens.numel():
        result.index_add_(0, layout.shared_tokens, at(tables.shared_row, tables.shared_column, layout.shared_tokens))
    return result


class _PackedAttention(torch.autograd.Function):
    """Rotary embedding and attention of a one-row pass: `q [L, heads · d]`, `k` and `v
    [L, kv_heads · d]` (the projections' outputs) to `[L, heads · d]` (the output projection's
    input), computed over the examples laid out in rows (`RowLayout`)."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: RowLayout,
        tables: _PassTables,
        bias: torch.Tensor,
        blocks: Blocks,
        causal: bool,
        kv_heads: int,
    ) -> torch.Tensor:
        rows, _, width, _ = layout.allowed.shape
        dim = v.shape[-1] // kv_heads
        heads = q.shape[-1] // dim
        group = heads // kv_heads
        index = layout.gather.view(rows, width)
        rope, gather = kernel_for(f"rope_rows_{dim}", q, k), kernel_for("rows_of", v)
        if rope is not None and gather is not None:  # each in one pass (`reference.rope_rows`)
            q_att = rope(q.view(-1, heads, dim), index, *(t.view(rows, width, dim) for t in tables.query_rows))
            k_att = rope(k.view(-1, kv_heads, dim), index, *(t.view(rows, width, dim) for t in tables.key_rows))
            v_att = gather(v.view(-1, kv_heads, dim), index)
        else:
            # gathered into rows (padding slots hold token 0, which only other padding slots see),
            # then rotated straight into the `[rows, kv_heads, group · width, d]` layout the
            # matmuls read
            cos, sin = (t.view(rows, width, 1, 1, dim) for t in tables.query_rows)
            q_rows = q.index_select(0, layout.gather).view(rows, width, kv_heads, group, dim)
            q_att = q.new_empty(rows, kv_heads, group, width, dim)
            _rotate(q_rows, cos, sin, q_att.permute(0, 3, 1, 2, 4))
            cos, sin = (t.view(rows, width, 1, dim) for t in tables.key_rows)
            k_rows = k.index_select(0, layout.gather).view(rows, width, kv_heads, dim)
            k_att = k.new_empty(rows, kv_heads, width, dim)
            _rotate(k_rows, cos, sin, k_att.permute(0, 2, 1, 3))
            v_att = v.index_select(0, layout.gather).view(rows, width, kv_heads, dim).permute(0, 2, 1, 3).contiguous()
        q_att = q_att.view(rows, kv_heads, group * width, dim)
        out, lse = attend(q_att, k_att, v_att, bias, group, blocks, causal)
        ctx.save_for_backward(q_att, k_att, v_att, bias, lse)
        ctx.layout, ctx.tables, ctx.blocks, ctx.group = layout, tables, blocks, group
        # each token's output from its slot: `[L, heads, d]`, the heads in the model's order
        return _tokens_of(out.view(rows, heads, width, dim), tables.row, tables.column).view(q.shape)

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor) -> tuple[Any, ...]:
        q_att, k_att, v_att, bias, lse = ctx.saved_tensors
        layout, tables, group = ctx.layout, ctx.tables, ctx.group
        rows, kv_heads, _, dim = k_att.shape
        width = layout.allowed.shape[-1]
        heads, tokens = kv_heads * group, tables.row.shape[0]
        d_out = d_out.view(tokens, heads, dim).to(q_att.dtype)
        gather = kernel_for("rows_of", d_out)
        if gather is not None:
            d_o = gather(d_out, tables.output_slots)
        else:
            d_o = d_out.new_zeros(rows, heads, width, dim)  # padding slots: no gradient
            d_o.permute(0, 2, 1, 3)[tables.row, tables.column] = d_out
        d_q, d_k, d_v = attend_backward(q_att, k_att, v_att, bias, group, ctx.blocks, d_o.view(q_att.shape), lse)
        d_q = _rotated_back_to_tokens(d_q.view(rows, heads, width, dim), tables.row, tables.column, tables.query_tokens)
        d_k = _token_grads(d_k, tables, layout, tables.key_tokens)
        d_v = _token_grads(d_v, tables, layout)
        return d_q.view(tokens, -1), d_k.view(tokens, -1), d_v.reshape(tokens, -1), None, None, None, None, None, None


def _tokens_of(rows: torch.Tensor, row: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """`reference.tokens_of`: the tokens of `[rows, heads, width, d]` at slots `(row, column)`."""
    fused = kernel_for("tokens_of", rows)
    return fused(rows, row, column) if fused is not None else rows.permute(0, 2, 1, 3)[row, column]


def _rotated_back_to_tokens(
    rows: torch.Tensor, row: torch.Tensor, column: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """The gradient at slots `(row, column)` of `rows [rows, heads, width, d]`, rotated back with
    the rotary `table` for those tokens: `[tokens, heads, d]` (`reference.rope_tokens_back`)."""
    fused = kernel_for(f"rope_tokens_back_{rows.shape[-1]}", rows)
    if fused is not None:
        return fused(rows, row, column, *table)
    cos, sin = (t[:, None] for t in table)
    return _rotate_back(rows.permute(0, 2, 1, 3)[row, column], cos, sin)


def _packed_layout(
    module: Any, hidden_states: torch.Tensor, packed: PackedPass | None, cache: Any, kwargs: dict[str, Any]
) -> RowLayout | None:
    """The row layout of a one-row packed pass that `_PackedAttention` takes, else None."""
    if (
        packed is None
        or cache is not None
        or module.config._attn_implementation != ATTENTION_NAME
        or (module.training and module.attention_dropout > 0)
        or any(kwargs.get(name) is not None for name in SEMANTIC_KWARGS)
        or hidden_states.shape[0] != 1
    ):
        return None
    return packed.layout(hidden_states.shape[1], module.config.num_attention_heads)


def _llama_attention_forward(
    module: Any,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    attention_mask: torch.Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    packed: PackedPass | None = kwargs.get(PASS_KWARG)
    layout = None
    if position_embeddings is not None and "past_key_values" not in kwargs:
        layout = _packed_layout(module, hidden_states, packed, cache, kwargs)
    if layout is None or packed is None or position_embeddings is None:
        return type(module).forward(module, hidden_states, position_embeddings, attention_mask, cache=cache, **kwargs)
    tokens = hidden_states.shape[1]
    q = module.q_proj(hidden_states).view(tokens, -1)
    k = module.k_proj(hidden_states).view(tokens, -1)
    v = module.v_proj(hidden_states).view(tokens, -1)
    dtype = compute_dtype(q)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    cos, sin = position_embeddings
    tables = _pass_tables(packed, layout, cos, sin, module.scaling, dtype)
    bias, blocks, causal = packed.additive_mask(layout.allowed, dtype)
    kv_heads = module.config.num_key_value_heads
    out = _PackedAttention.apply(q, k, v, layout, tables, bias, blocks, causal, kv_heads)
    return module.o_proj(out.view(1, tokens, -1)), None


def fuse_packed_attention(model: torch.nn.Module) -> int:
    """Give every Llama-code attention layer of `model` the packed path above; returns how many
    were switched."""
    from transformers.models.llama.modeling_llama import LlamaAttention

    reference = inspect.unwrap(LlamaAttention.forward)
    switched = 0
    for module in model.modules():
        if "forward" in module.__dict__ or not hasattr(module, "q_proj"):
            continue
        if same_code(inspect.unwrap(type(module).forward), reference):
            module.forward = functools.partial(_llama_attention_forward, module)
            switched += 1
    return switched
