"""Training attention: on CPUs a backward in batched matmuls instead of PyTorch's fused SDPA kernel
(and its forward too, but on AMX CPUs); on CUDA, SDPA without its cuDNN backend.

On a CPU, `scaled_dot_product_attention`'s forward+backward over a training pass's short rows (a
few hundred tokens) runs far below the machine's matmul speed, slower than the same attention
written as `softmax(QKᵀ)V` in plain matmuls. Autograd would keep every layer's heads × length²
probabilities for backward, so `_MatmulAttention` keeps only Q, K and V, like a fused kernel, and
recomputes the probabilities in backward with one more matmul. SDPA's forward alone is the faster
one on AMX CPUs (`attend`).

Grouped-query attention needs no copies of K and V: a group's query heads are laid end to end,
`[batch, kv_heads, group · length, head_dim]`, and multiply their shared K and V head directly.
The rows of a long example (where the score matrix would be large) keep PyTorch's kernel.

A pass packed into one row with no padding (`pack_examples(one_row=True)`) comes with its examples'
boundaries (`PackedRow`), which the trainer hands to every attention layer in a `PackedPass` (the
model's `PASS_KWARG` keyword argument; attention never reads them back from a mask).
`rows_attention` gathers the examples into the rows the packer chose, as wide as the longest, for
attention alone: the projections and MLPs, most of a pass, run on the examples' own tokens only.
(Each example's attention on its own wastes no score either, but is slower: many small matmuls.)
What every layer of the pass shares, the row layout, its additive mask and the rotary tables
(`packed_attention.py`), is computed once into the `PackedPass`, and goes with the pass.

On CUDA, cuDNN's attention (PyTorch's pick on Hopper GPUs) builds an execution plan for each new
sequence length, and packed batches have a new length almost every step: `training_sdpa_backends`
leaves it out, so flash or memory-efficient attention run.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import torch

from tunehouse.hardware import cpu_has_amx
from tunehouse.train.batching import PackedRow
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
PASS_KWARG = "tunehouse_pass"
"""The keyword argument that hands a forward pass's `PackedPass` to every attention layer:
transformers' models pass their keyword arguments on to each attention layer and its attention
function (as they do `cu_seq_lens_q`), and gradient checkpointing replays them in backward."""


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


def query_blocks(bias: torch.Tensor, length: int) -> Blocks:
    """Where no query of a row's first half may see a key of its second half (every causal mask),
    the first half's scores skip those keys: a quarter of the score matrix and of its softmax is
    never computed, for a few more (smaller) matmuls and copies."""
    half = length // 2
    if length >= MIN_SPLIT_LENGTH and bool(torch.isneginf(bias[..., :half, half:]).all()):
        return ((half, length, length), (0, half, half))
    return ((0, length, length),)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, Blocks, bool]:
    """`allowed [b, 1, L, L]` as a bias to add to the grouped scores (0 where allowed, −inf where
    not), `[b, 1, 1, L, L]` in `dtype`, its `query_blocks`, and whether it is causal (no query sees
    a later key: the fused forward may then skip the blocks above the diagonal). Adding a broadcast
    bias is faster than `masked_fill_` with the negated mask; a pass builds it once for all its
    layers (`PackedPass.additive_mask`)."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
    bias = bias[:, :, None]
    length = allowed.shape[-1]
    blocks = query_blocks(bias, length)
    above_diagonal = torch.ones(length, length, dtype=torch.bool, device=allowed.device).triu(1)
    causal = not bool((allowed & above_diagonal).any())
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

    On a CPU with AMX, by SDPA's fused (flash) kernel: it keeps no probabilities either, is the
    faster there, and keeps its scores in fp32, so its bf16 output is the nearer to exact; given a
    `causal` mask it skips the key blocks above the diagonal as well (the same numbers). Its
    backward is the slower one, so backward is always `attend_backward`, which takes the
    log-sum-exp to recompute the probabilities in one pass. Elsewhere the batched matmuls, a block
    of queries at a time (`query_blocks`): SDPA's kernel was the slower one on the AVX-512 BF16
    machine measured."""
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
    def forward(
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
    def backward(ctx: Any, d_out: torch.Tensor) -> tuple[Any, ...]:
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


def row_layout(packed: PackedRow, device: torch.device) -> RowLayout:
    """The slots of `packed`'s examples in the rows the packer chose for them (`PackedRow.rows`);
    with a shared prefix (tokens `0..prefix`, before the examples), each example's slots start
    with a copy of it."""
    prefix, segments = packed.prefix, packed.segments
    lengths = [prefix + end - start for start, end in segments]
    width = max(lengths)
    gather = torch.zeros(len(packed.rows), width, dtype=torch.long)
    owner = torch.full((len(packed.rows), width), -1, dtype=torch.long)
    for r, row in enumerate(packed.rows):
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


class PackedPass:
    """One forward pass's examples as the packer laid them out (`PackedRow`, None for a pass it did
    not pack in one row), and what attention derives from them once for all the pass's layers: the
    row layout, additive masks and (`packed_attention.py`) rotary tables. The speed wing makes one
    for each pass (`Speedups.pass_inputs`); nothing in it outlives the pass, so no layer's result
    depends on what an earlier pass left behind."""

    def __init__(self, packed: PackedRow | None, device: torch.device) -> None:
        self.packed = packed
        self.device = device
        self._layout: RowLayout | None = None
        self._masks: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor, Blocks, bool]] = {}
        self.rotary_tables: dict[tuple[float, torch.dtype], tuple[torch.Tensor, torch.Tensor, Any]] = {}
        """`packed_attention`'s tables for this pass, by the attention's scaling and dtype, with the
        rotary `cos` and `sin` they were computed from."""

    def layout(self, length: int, heads: int) -> RowLayout | None:
        """The row layout of a one-row pass of `length` tokens and several examples whose rows'
        score matrices for `heads` heads fit in `MAX_SCORE_ELEMENTS`; else None."""
        packed = self.packed
        if packed is None or len(packed.segments) < 2 or packed.segments[-1][1] != length:
            return None
        width = max(packed.prefix + end - start for start, end in packed.segments)
        if len(packed.rows) * heads * width * width > MAX_SCORE_ELEMENTS:
            return None
        if self._layout is None:
            self._layout = row_layout(packed, self.device)
        return self._layout

    def additive_mask(self, allowed: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, Blocks, bool]:
        """`additive_mask(allowed, dtype)`, built once per pass: every layer brings the same mask."""
        kept = self._masks.get(dtype)
        if kept is None or kept[0] is not allowed:
            kept = self._masks[dtype] = (allowed, *additive_mask(allowed, dtype))
        return kept[1], kept[2], kept[3]


def rows_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layout: RowLayout, scale: float, packed: PackedPass
) -> torch.Tensor:
    """`matmul_attention` of a one-row pass (`[1, heads, L, d]`) over its examples laid out in rows;
    returns `[1, L, heads, d]`. Gathering into rows and back costs a copy of Q, K, V and the output;
    computing each example's attention on its own would cost more in small, slow matmuls."""
    rows, _, width, _ = layout.allowed.shape

    def to_rows(x: torch.Tensor) -> torch.Tensor:
        tokens = x[0].transpose(0, 1)  # [L, heads, d]
        return tokens.index_select(0, layout.gather).view(rows, width, *tokens.shape[1:]).transpose(1, 2)

    out = matmul_attention(to_rows(query), to_rows(key), to_rows(value), layout.allowed, scale, packed)
    slots = out.transpose(1, 2).reshape(rows * width, *out.shape[1:2], out.shape[-1])
    return slots.index_select(0, layout.scatter)[None]


def matmul_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor,
    scale: float,
    packed: PackedPass | None = None,
) -> torch.Tensor:
    """Attention of `query [b, heads, L, d]` over `key`/`value [b, kv_heads, L, d]` where `allowed
    [b or 1, 1, L, L]` (True: the query may see the key); returns `[b, heads, L, d]`. `packed`:
    the pass's, which keeps the mask's bias for the pass's other layers."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    # fp32 inputs (e.g. after a norm with fp32 weights) would otherwise compute backward in fp32
    dtype = compute_dtype(query)
    q = (query.to(dtype) * scale).reshape(batch, kv_heads, group * length, dim)
    k, v = key.to(dtype), value.to(dtype)
    bias, blocks, causal = additive_mask(allowed, dtype) if packed is None else packed.additive_mask(allowed, dtype)
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
    unchanged. A sliding window needs nothing here: it is in the mask, as for SDPA (and the wing
    hands no boundaries to a model with one, `full_causal_attention`). A one-row pass's examples
    are laid out in rows from the boundaries in its `PackedPass` (`PASS_KWARG`)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed: PackedPass | None = kwargs.pop(PASS_KWARG, None)
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
    layout = packed.layout(length, heads) if packed is not None and batch == 1 else None
    if packed is not None and layout is not None:
        return rows_attention(query, key, value, layout, scale, packed), None
    if batch * heads * length * length > MAX_SCORE_ELEMENTS:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if attention_mask is None:  # transformers leaves the mask out when it is plain causal
        attention_mask = _causal_mask(length, query.device)
    elif not bool(attention_mask.any(dim=-1).all()):  # a query that sees no key (left padding): SDPA's rules
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    out = matmul_attention(query, key, value, attention_mask, scale, packed)
    return out.transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=4)
def _causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """One object per length, so every layer of a pass finds its bias in the `PackedPass`."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]


def full_causal_attention(config: Any) -> bool:
    """Whether every attention layer of a model with this config sees all earlier tokens (no
    sliding window): then a pass's example boundaries are all its attention needs, and so is its
    own 4D mask (a shared prefix's), which transformers uses as given, window or not."""
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
    transformers_model: Any = model  # a PreTrainedModel; torch types its attributes as tensors or modules
    if transformers_model.config._attn_implementation != "sdpa":
        return False
    if not getattr(transformers_model, "_can_set_attn_implementation", lambda: False)():
        return False
    transformers_model.set_attn_implementation(ATTENTION_NAME)
    return transformers_model.config._attn_implementation == ATTENTION_NAME


def training_sdpa_backends(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Where training runs its forward passes: on CUDA, SDPA may use flash, memory-efficient or
    math attention but not cuDNN (which re-plans for every new sequence length, see above); the
    backward pass runs the backend its forward chose."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
