"""Training attention: on CPUs a backward in batched matmuls instead of PyTorch's fused SDPA kernel
(and its forward too, but on AMX CPUs); on CUDA, SDPA without its cuDNN backend.

On a CPU, `scaled_dot_product_attention`'s forward+backward over a training pass's short rows
(a few hundred tokens, 9 heads) runs at about a tenth of the machine's matmul speed: measured on
the 2-core AVX-512 BF16 machine, 22.6 ms for 4 rows of 263 tokens against 9.5 ms for the same
attention written as `softmax(QKᵀ)V` in plain bf16 matmuls under autograd; on the AMX machine, 26.4
against 15.2 ms for 4 rows of 270. Autograd would keep the heads × length² probabilities of every
layer for backward (150-260 MB per 962-token pass here), so `_MatmulAttention` keeps only Q, K and
V, like a fused kernel, and recomputes the probabilities in backward with one more matmul (15.9 ms
for those rows). SDPA's forward alone is the faster one on the AMX machine (`attend`).

Grouped-query attention needs no copies of K and V: a group's query heads are laid end to end,
`[batch, kv_heads, group · length, head_dim]`, and multiply their shared K and V head directly.
The rows of a long example (where the score matrix would be large) keep PyTorch's kernel.

A pass packed into one row with no padding (`pack_examples(one_row=True)`) gets a block-diagonal
causal mask from transformers. `packed_row_layout` finds its examples in that mask, and
`rows_attention` gathers them into rows as wide as the longest for attention alone: the projections
and MLPs, nine tenths of a pass, run on the examples' own tokens only (on the training bench, rows
for the whole layer carried 4.5 % padding). Each example's attention on its own would waste no
score either, but was slower: many small matmuls (in-process A/B over the bench's steps, rows for
the whole layer = 1: 1.022 per example, 1.032 gathered into rows).

On CUDA, PyTorch 2.11 picks cuDNN's attention on Hopper GPUs; cuDNN builds an execution plan for
each new sequence length, and packed batches have a new length almost every step: measured on an
H100 (1B Llama, batch 8), a step over new lengths took 776 ms against 250 ms once the same lengths
had been seen. `training_sdpa_backends` leaves cuDNN out, so flash or memory-efficient attention run.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import torch

from tunehouse.hardware import cpu_has_amx
from tunehouse.train.batching import first_fit_rows
from tunehouse.train.speed.casts import compute_dtype
from tunehouse.train.speed.kernels import kernel_for
from tunehouse.train.speed.reference import attention_probabilities

ATTENTION_NAME = "tunehouse_matmul"
MAX_SCORE_ELEMENTS = 2**24
"""Largest batch × heads × length² score matrix computed at once (32 MiB in bf16); larger rows,
where SDPA's fixed costs matter less, go to SDPA."""
SEMANTIC_KWARGS = ("softcap", "position_bias", "s_aux", "sinks")
"""Attention-function arguments that change what attention computes; a call with any of them set
goes to SDPA (which rejects what it does not support, rather than dropping it)."""


def _probabilities(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, group: int) -> torch.Tensor:
    """softmax(QKᵀ + bias) as `[batch, kv_heads, group · queries, keys]`."""
    scores = torch.matmul(q, k.transpose(-1, -2))
    batch, kv_heads, rows, length = scores.shape
    scores.view(batch, kv_heads, group, rows // group, length).add_(bias)
    return torch.softmax(scores, dim=-1)


def _probabilities_from_lse(
    q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, lse: torch.Tensor, group: int
) -> torch.Tensor:
    """`_probabilities` from the fused forward's log-sum-exp `lse [batch, kv_heads · group,
    queries]`: `exp(QKᵀ + bias − lse)` in one pass (`reference.attention_probabilities`)."""
    scores = torch.matmul(q, k.transpose(-1, -2))
    batch, kv_heads, rows, keys = scores.shape
    queries = rows // group
    scores = scores.view(batch, kv_heads * group, queries, keys)
    bias = bias[:, :, 0].expand(batch, 1, queries, keys)
    fused = kernel_for("attention_probabilities", scores, bias)
    p = (fused or attention_probabilities)(scores, bias, lse[..., None])
    return p.view(batch, kv_heads, rows, keys)


Blocks = tuple[tuple[int, int, int], ...]
"""`(start, end, keys)`: the queries `start..end` of a row, and how many of its first keys they may
see; the block that sees every key comes first."""
MIN_SPLIT_LENGTH = 64
"""Rows at least this long have the first half of their queries computed against the first half
of the keys only (`query_blocks`)."""
_BIAS_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor, Blocks, bool]] = {}


def query_blocks(bias: torch.Tensor, length: int) -> Blocks:
    """Where no query of a row's first half may see a key of its second half (every causal mask),
    the first half's scores skip those keys: a quarter of the score matrix and of its softmax is
    never computed, for a few more (smaller) matmuls and copies. In-process A/B on the training
    bench: +1.6 % and +4.0 % tokens/s."""
    half = length // 2
    if length >= MIN_SPLIT_LENGTH and bool(torch.isneginf(bias[..., :half, half:]).all()):
        return ((half, length, length), (0, half, half))
    return ((0, length, length),)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, Blocks, bool]:
    """`allowed [b, 1, L, L]` as a bias to add to the grouped scores (0 where allowed, −inf where
    not), `[b, 1, 1, L, L]` in `dtype`, its `query_blocks`, and whether it is causal (no query sees
    a later key: the fused forward may then skip the blocks above the diagonal). Adding a broadcast
    bias takes about a third of the time of `masked_fill_` with the negated mask (measured: 1.8 →
    0.7 ms over 4 rows of 263 tokens, 9 heads), and every layer of a forward pass gets the same mask
    object, so the bias is built once per pass (one entry is kept: the last mask seen)."""
    cached = _BIAS_CACHE.get("last")
    if cached is not None and cached[0] is allowed and cached[1].dtype == dtype:
        return cached[1], cached[2], cached[3]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
    bias = bias[:, :, None]
    length = allowed.shape[-1]
    blocks = query_blocks(bias, length)
    above_diagonal = torch.ones(length, length, dtype=torch.bool, device=allowed.device).triu(1)
    causal = not bool((allowed & above_diagonal).any())
    _BIAS_CACHE["last"] = (allowed, bias, blocks, causal)
    return bias, blocks, causal


def _query_rows(x: torch.Tensor, group: int, start: int, end: int) -> torch.Tensor:
    """Rows `start..end` of every query head of `x [b, kv_heads, group · L, d]`, in the same layout."""
    batch, kv_heads, rows, dim = x.shape
    length = rows // group
    if start == 0 and end == length:
        return x
    return x.view(batch, kv_heads, group, length, dim)[:, :, :, start:end].reshape(batch, kv_heads, -1, dim)


def _put_query_rows(out: torch.Tensor, part: torch.Tensor, group: int, start: int, end: int) -> None:
    batch, kv_heads, rows, dim = out.shape
    out.view(batch, kv_heads, group, rows // group, dim)[:, :, :, start:end] = part.view(
        batch, kv_heads, group, end - start, dim
    )


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    group: int,
    blocks: Blocks,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(QKᵀ + bias)V, Q already scaled, `[batch, kv_heads, group · length, dim]`, and the
    scores' log-sum-exp `[batch, kv_heads · group, length]` where the fused kernel computed it.

    On a CPU with AMX, by SDPA's fused (flash) kernel: it keeps no probabilities either, takes
    about half the time of the batched matmuls in bf16 there (6.8 against 14.3 ms for 2 rows of
    558 tokens, 11.0 against 21.0 for one row of 1,000; no slower in fp32), and keeps its scores
    in fp32, so its bf16 output is the nearer to exact (max error 0.015 against 0.11 for bf16
    scores and softmax, measured against float64); given a `causal` mask it skips the key blocks
    above the diagonal as well (the same numbers; rows wider than its 512-key blocks: 3.7 against
    5.5 ms for 2 rows of 558, 7.2 against 10.6 for 1 of 1,300). Its backward is the slower one, so
    backward is always `attend_backward`, which takes the log-sum-exp to recompute the
    probabilities in one pass. Elsewhere the batched matmuls, a block of queries at a time
    (`query_blocks`): SDPA's kernel was the slower one on the AVX-512 BF16 machine measured."""
    if q.device.type == "cpu" and cpu_has_amx() and v.shape[-1] == q.shape[-1]:  # the kernel's one head size
        batch, kv_heads, rows, dim = q.shape
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.reshape(batch, kv_heads * group, rows // group, dim),
            k,
            v,
            0.0,
            causal,
            attn_mask=bias[:, :, 0],
            scale=1.0,
        )
        return out.view(batch, kv_heads, rows, v.shape[-1]), lse
    out = q.new_empty(*q.shape[:-1], v.shape[-1]) if len(blocks) > 1 else None
    for start, end, keys in blocks:
        q_block = _query_rows(q, group, start, end)
        p = _probabilities(q_block, k[:, :, :keys], bias[..., start:end, :keys], group)
        out_block = torch.matmul(p, v[:, :, :keys])
        if out is None:
            out = out_block
        else:
            _put_query_rows(out, out_block, group, start, end)
    assert out is not None
    return out, None


def attend_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    group: int,
    blocks: Blocks,
    d_out: torch.Tensor,
    lse: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of `attend` with respect to Q, K and V, recomputing the probabilities (from
    the forward's log-sum-exp `lse` where it has one)."""
    d_out = d_out.to(q.dtype).contiguous()
    d_q = torch.empty_like(q) if len(blocks) > 1 else None
    d_k = d_v = None
    for start, end, keys in blocks:
        q_block, d_o = _query_rows(q, group, start, end), _query_rows(d_out, group, start, end)
        k_block, v_block = k[:, :, :keys], v[:, :, :keys]
        bias_block = bias[..., start:end, :keys]
        if lse is None:
            p = _probabilities(q_block, k_block, bias_block, group)
        else:
            p = _probabilities_from_lse(q_block, k_block, bias_block, lse[:, :, start:end], group)
        d_v_block = torch.matmul(p.transpose(-1, -2), d_o)  # sums over the group's query heads
        d_p = torch.matmul(d_o, v_block.transpose(-1, -2))
        d_scores = torch.ops.aten._softmax_backward_data(d_p, p, -1, p.dtype)
        d_q_block = torch.matmul(d_scores, k_block)
        d_k_block = torch.matmul(d_scores.transpose(-1, -2), q_block)
        if d_k is None or d_v is None:  # the first block sees every key
            d_k, d_v = d_k_block, d_v_block
        else:
            d_k[:, :, :keys] += d_k_block
            d_v[:, :, :keys] += d_v_block
        if d_q is None:
            d_q = d_q_block
        else:
            _put_query_rows(d_q, d_q_block, group, start, end)
    assert d_q is not None and d_k is not None and d_v is not None
    return d_q, d_k, d_v


class _MatmulAttention(torch.autograd.Function):
    """`attend`, saving its inputs rather than the probabilities."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor,
        group: int,
        blocks: Blocks,
        causal: bool,
    ) -> torch.Tensor:
        out, lse = attend(q, k, v, bias, group, blocks, causal)
        ctx.save_for_backward(q, k, v, bias, lse)
        ctx.group, ctx.blocks = group, blocks
        return out

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        q, k, v, bias, lse = ctx.saved_tensors
        return *attend_backward(q, k, v, bias, ctx.group, ctx.blocks, d_out, lse), None, None, None, None


@dataclass(frozen=True)
class RowLayout:
    """A one-row pass's examples laid out in rows as wide as the longest, for attention only."""

    gather: torch.Tensor
    """`[rows · width]`: the token in each slot (token 0 in padding slots, which nothing reads)."""
    scatter: torch.Tensor
    """`[L]`: each token's slot."""
    allowed: torch.Tensor
    """`[rows, 1, width, width]`: a slot sees the earlier slots of its own example (padding: of its
    row's padding, so that no query sees no key)."""
    shared_slots: torch.Tensor
    """The slots of a shared prefix's tokens (`pack_examples(share_prefix=True)`) other than the
    ones in `scatter`: each example after the first has its own copy of the prefix's keys and
    values in its row, whose gradients are summed into the prefix's tokens. Empty without one."""
    shared_tokens: torch.Tensor
    """The token in each of `shared_slots`."""


def row_layout(segments: list[tuple[int, int]], device: torch.device, prefix: int = 0) -> RowLayout:
    """Rows for the examples at `segments` (`(start, end)` each, end to end), filled first-fit as
    `pack_examples` fills them; with a shared `prefix` (tokens `0..prefix`, before the segments),
    each example's slots start with a copy of it."""
    lengths = [prefix + end - start for start, end in segments]
    width = max(lengths)
    rows = first_fit_rows(lengths, width)
    gather = torch.zeros(len(rows), width, dtype=torch.long)
    owner = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            start, end = segments[i]
            gather[r, at : at + prefix] = torch.arange(prefix)
            gather[r, at + prefix : at + lengths[i]] = torch.arange(start, end)
            owner[r, at : at + lengths[i]] = i
            at += lengths[i]
    slots = (owner >= 0).flatten().nonzero().squeeze(1)
    tokens = gather.flatten()[slots]
    in_prefix = tokens < prefix
    scatter = torch.empty(segments[-1][1], dtype=torch.long)
    scatter[tokens[~in_prefix]] = slots[~in_prefix]
    prefix_slots = slots[in_prefix]  # each example's copy in turn, the first one in row 0 at slot 0
    scatter[:prefix] = prefix_slots[:prefix]
    shared_slots, shared_tokens = prefix_slots[prefix:], tokens[in_prefix][prefix:]
    allowed = (owner[:, :, None] == owner[:, None, :]) & torch.ones(width, width, dtype=torch.bool).tril()
    return RowLayout(
        gather.flatten().to(device),
        scatter.to(device),
        allowed[:, None].to(device),
        shared_slots.to(device),
        shared_tokens.to(device),
    )


def rows_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: RowLayout, scale: float
) -> torch.Tensor:
    """`matmul_attention` of a one-row pass (`[1, heads, L, d]`) over its examples laid out in rows;
    returns `[1, L, heads, d]`. Gathering into rows and back costs a copy of Q, K, V and the output;
    computing each example's attention on its own would cost more in small, slow matmuls."""
    rows, _, width, _ = layout.allowed.shape

    def to_rows(x: torch.Tensor) -> torch.Tensor:
        tokens = x[0].transpose(0, 1)  # [L, heads, d]
        return tokens.index_select(0, layout.gather).view(rows, width, *tokens.shape[1:]).transpose(1, 2)

    out = matmul_attention(to_rows(query), to_rows(key), to_rows(value), layout.allowed, scale)
    slots = out.transpose(1, 2).reshape(rows * width, *out.shape[1:2], out.shape[-1])
    return slots.index_select(0, layout.scatter)[None]


_LAYOUT_CACHE: dict[str, tuple[torch.Tensor, RowLayout | None]] = {}


def packed_row_layout(allowed: torch.Tensor, length: int) -> RowLayout | None:
    """If `allowed [1, 1, L, L]` is the block-diagonal causal mask of several examples packed end to
    end (each query sees its own example's keys up to itself), or of examples after a shared
    prefix (`_shared_prefix_layout`), their row layout; else None.

    Read from the mask itself, so a mask of any other shape (padding, a sliding window) keeps the
    general path; every layer of a pass gets the same mask object, so the last answer is kept.
    """
    cached = _LAYOUT_CACHE.get("last")
    if cached is not None and cached[0] is allowed:
        return cached[1]
    layout = None
    if allowed.shape == (1, 1, length, length):
        square = allowed[0, 0]
        starts = _causal_block_starts(square)
        if starts is not None and len(starts) > 1:
            layout = row_layout(list(zip(starts, starts[1:] + [length], strict=True)), allowed.device)
        else:
            layout = _shared_prefix_layout(square)
    _LAYOUT_CACHE["last"] = (allowed, layout)
    return layout


def _causal_block_starts(square: torch.Tensor) -> list[int] | None:
    """Where the blocks of `square [L, L]` start if it is block-diagonal causal, else None."""
    length = square.shape[0]
    positions = torch.arange(length, device=square.device)
    first_key = square.to(torch.uint8).argmax(dim=-1)  # where each query's visible keys start
    block_start = torch.where(first_key == positions, positions, 0).cummax(dim=0).values
    causal_blocks = (positions[None, :] >= block_start[:, None]) & (positions[None, :] <= positions[:, None])
    if torch.equal(first_key, block_start) and torch.equal(causal_blocks, square):
        return positions[first_key == positions].tolist()
    return None


def _shared_prefix_layout(square: torch.Tensor) -> RowLayout | None:
    """The row layout of `pack_examples(share_prefix=True)`'s mask: every query sees the first
    `prefix` keys (causally within them), and after them the mask is block-diagonal causal with
    at least two blocks. None for any other mask."""
    length = square.shape[0]
    prefix = int(square[-1].to(torch.uint8).argmin())  # the last query's first hidden key (0: none)
    if prefix == 0:
        return None
    causal = torch.ones(length, prefix, dtype=torch.bool, device=square.device).tril()
    if not torch.equal(square[:, :prefix], causal) or bool(square[:prefix, prefix:].any()):
        return None
    starts = _causal_block_starts(square[prefix:, prefix:])
    if starts is None or len(starts) < 2:
        return None
    ends = starts[1:] + [length - prefix]
    segments = [(prefix + start, prefix + end) for start, end in zip(starts, ends, strict=True)]
    return row_layout(segments, square.device, prefix)


def fitting_row_layout(attention_mask: torch.Tensor | None, length: int, heads: int) -> RowLayout | None:
    """`packed_row_layout` of a one-row pass's mask, if its rows' score matrices for `heads` heads
    fit in `MAX_SCORE_ELEMENTS`; else None."""
    layout = packed_row_layout(attention_mask, length) if attention_mask is not None else None
    if layout is None:
        return None
    rows, _, width, _ = layout.allowed.shape
    return layout if rows * heads * width * width <= MAX_SCORE_ELEMENTS else None


def matmul_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of `query [b, heads, L, d]` over `key`/`value [b, kv_heads, L, d]` where `allowed
    [b or 1, 1, L, L]` (True: the query may see the key); returns `[b, heads, L, d]`."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    # fp32 inputs (e.g. after a norm with fp32 weights) would otherwise compute backward in fp32
    dtype = compute_dtype(query)
    q = (query.to(dtype) * scale).reshape(batch, kv_heads, group * length, dim)
    k, v = key.to(dtype), value.to(dtype)
    bias, blocks, causal = additive_mask(allowed, dtype)
    out = _MatmulAttention.apply(q, k, v, bias, group, blocks, causal)
    return out.view(batch, heads, length, value.shape[-1])


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract (see `sdpa_attention_forward`): returns
    `[batch, length, heads, head_dim]`. Anything but plain causal or masked self-attention of a
    moderate size (dropout, a KV cache, softcapping, position biases, attention sinks) goes to SDPA
    unchanged. A sliding window needs nothing here: it is in the mask, as for SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    plain = (
        key.shape[2] == length
        and (dropout == 0.0 or not module.training)
        and all(kwargs.get(name) is None for name in SEMANTIC_KWARGS)
        and kwargs.get("is_causal", True) is not False
        and getattr(module, "is_causal", True)
        and (attention_mask is None or attention_mask.dtype == torch.bool)
        and length > 1
    )
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = scaling if scaling is not None else dim**-0.5
    layout = fitting_row_layout(attention_mask, length, heads) if batch == 1 else None
    if layout is not None:
        return rows_attention(query, key, value, layout, scale), None
    if batch * heads * length * length > MAX_SCORE_ELEMENTS:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if attention_mask is None:  # transformers leaves the mask out when it is plain causal
        attention_mask = _causal_mask(length, query.device)
    elif not bool(attention_mask.any(dim=-1).all()):  # a query that sees no key (left padding): SDPA's rules
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    out = matmul_attention(query, key, value, attention_mask, scale)
    return out.transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=4)
def _causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """One object per length, so every layer of a pass finds its bias in `additive_mask`'s cache."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]


def full_causal_attention(config: Any) -> bool:
    """Whether every attention layer of a model with this config sees all earlier tokens (no
    sliding window): then a pass's own 4D mask (a shared prefix's) is all its attention needs,
    since transformers uses a 4D mask as given, window or not."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return all(kind == "full_attention" for kind in layer_types)
    return getattr(config, "sliding_window", None) is None


def use_matmul_attention(model: torch.nn.Module) -> bool:
    """Switch a transformers model that runs SDPA to `attention_forward` (with SDPA's mask
    creation, and SDPA itself as the fallback). Models that transformers runs with another
    implementation (eager-only ones, such as those with softcapping or sinks) keep it. Returns
    whether the model was switched."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
    if model.config._attn_implementation != "sdpa":
        return False
    if not getattr(model, "_can_set_attn_implementation", lambda: False)():
        return False
    model.set_attn_implementation(ATTENTION_NAME)
    return model.config._attn_implementation == ATTENTION_NAME


def training_sdpa_backends(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Where training runs its forward passes: on CUDA, SDPA may use flash, memory-efficient or
    math attention but not cuDNN (which re-plans for every new sequence length, see above); the
    backward pass runs the backend its forward chose."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
