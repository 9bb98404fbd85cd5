"""A batched forward pass for Llama-family models: many sequences in one step, each on its own KV cache.

The tokens of every row in a step — one for a sequence that decodes, a chunk of its prompt for one that
prefills — are packed into one `[tokens, hidden]` matrix, so each projection is one matmul over the
whole batch (q/k/v as one, gate/up as one). Attention runs per sequence over that sequence's cache, so
a row's result never depends on its companions. On a CPU, attention and the element-wise passes
(RMSNorm with its residual add, RoPE, SwiGLU's gate) are `kernels.c`'s, each one call per layer for
every row, and where every projection is blocks a step runs all its layers in one call to C; on CUDA, or where no C compiler built them, every pass is PyTorch's (attention one call per
sequence and aligned block of its queries). Rows that use a LoRA adapter are grouped, and each
group adds its own low-rank update to the projections it adapts (`lora.py`). The weights are the
Hugging Face model's own, in bf16 where the hardware computes it fast, or as the 4- and 8-bit blocks
they were quantized to where they are such values (`blocks.py`); RoPE's frequencies (theta and
scaling) come from the model's own rotary embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from tunehouse.serve.batch import kernels
from tunehouse.serve.batch.blocks import BlockWeight, Checkpoint, quantized
from tunehouse.serve.batch.kv import BLOCK, CacheShape, SequenceCache
from tunehouse.serve.batch.lora import LoraWeights

SUPPORTED_ARCHITECTURES = frozenset({"LlamaForCausalLM"})
PACKED_FOR_ROWS = 16  # the rows oneDNN's packed layout is chosen for: a decode step's batch
REFINED_LOGITS = 8  # each row's most likely tokens whose logits are recomputed in float32 (`_refine`)


def supports(config: Any) -> bool:
    """Whether a model of `config` (a transformers config) is one this forward pass computes."""
    names = getattr(config, "architectures", None) or (
        ["LlamaForCausalLM"] if getattr(config, "model_type", None) == "llama" else []
    )
    return (
        bool(set(names) & SUPPORTED_ARCHITECTURES)
        and getattr(config, "pretraining_tp", 1) == 1
        and not getattr(config, "sliding_window", None)
    )


@dataclass
class Row:
    """One sequence's part of a step: `token_ids` at positions `cache.length …`, then written to `cache`."""

    token_ids: list[int]
    cache: SequenceCache
    lora: LoraWeights | None = None


def _linear(module: Any, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = module.bias.detach().to(dtype) if module.bias is not None else None
    return module.weight.detach().to(dtype), bias


@dataclass
class _Fused:
    """Projections that read the same input, as one matmul: their weights stacked, and where each one's
    outputs lie, so a LoRA adapter's update still lands on its own projection's columns.

    In bf16 on a CPU the stacked weight is packed once into oneDNN's blocked layout (what PyTorch's
    own compiler does for CPU inference), so no step re-packs it; a decode step then runs its matmuls
    in about two thirds of the time (BENCHMARKS.md). Weights that are block-quantized values stay
    blocks (`blocks.py`)."""

    weight: torch.Tensor | BlockWeight
    bias: torch.Tensor | None
    columns: tuple[tuple[str, int, int], ...]  # (projection, first column, end)
    packed: bool = False
    lib: Any = None  # the compiled kernels, for a BlockWeight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.weight, BlockWeight):
            out = self.weight.matmul(self.lib, x)
            return out if self.bias is None else out.add_(self.bias)
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return _linear_rows(x, self.weight, self.bias)


def _packed(fused: _Fused) -> _Fused:
    """`fused` with its weight in oneDNN's layout, where PyTorch has oneDNN and the weights are bf16 on
    the CPU; else as it is."""
    weight = fused.weight
    if (
        isinstance(weight, BlockWeight)
        or weight.dtype != torch.bfloat16
        or weight.device.type != "cpu"
        or not torch.backends.mkldnn.is_available()
    ):
        return fused
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_FOR_ROWS)
    return _Fused(packed, fused.bias, fused.columns, packed=True)


class _Exact:
    """Block-quantized forms of a model's weights, found in the float32 tensors of its checkpoint."""

    def __init__(self, folder: str | None, lib: Any) -> None:
        self.checkpoint = Checkpoint(folder) if folder and lib is not None and lib.block_matmul_available() else None
        self.lib = lib

    def blocks(self, names: list[str], *, int8_inputs: bool) -> BlockWeight | None:
        """The tensors `names` stacked (as one fused projection), as blocks (`int8_inputs`: see
        `quantized`); None where any is not saved in float32 or is not block-quantized values."""
        if self.checkpoint is None:
            return None
        tensors = [self.checkpoint.get(name) for name in names]
        if any(t is None or t.dtype != torch.float32 for t in tensors):
            return None
        return quantized(torch.cat([t for t in tensors if t is not None]), int8_inputs)


def _fuse(
    module: Any, names: tuple[str, ...], dtype: torch.dtype, exact: _Exact, prefix: str, *, int8_inputs: bool
) -> _Fused:
    parts = [_linear(getattr(module, name), dtype) for name in names]
    columns, start = [], 0
    for name, (weight, _) in zip(names, parts, strict=True):
        columns.append((name, start, start + weight.shape[0]))
        start += weight.shape[0]
    bias = None
    if any(b is not None for _, b in parts):
        bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in parts])
    weights = [f"{prefix}.{name}.weight" for name in names]
    blocks = exact.blocks(weights, int8_inputs=int8_inputs) if dtype == torch.bfloat16 else None
    if blocks is not None:
        return _Fused(blocks, bias, tuple(columns), lib=exact.lib)
    return _packed(_Fused(torch.cat([weight for weight, _ in parts]), bias, tuple(columns)))


@dataclass
class _Layer:
    attn_norm: torch.Tensor
    mlp_norm: torch.Tensor
    qkv: _Fused
    o: _Fused
    gate_up: _Fused
    down: _Fused


class BatchedLlama:
    """The forward pass of one loaded Llama model in `dtype`: its projections copied (stacked, packed),
    its norms and embedding shared with the model where the dtype is the model's."""

    def __init__(self, model: Any, dtype: torch.dtype, folder: str | None = None) -> None:
        """`folder`: the model's own files, where weights saved as block-quantized float32 values are
        found again as blocks (`blocks.py`)."""
        config = model.config
        inner = model.model
        self.dtype = dtype
        self.device = next(model.parameters()).device
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.eps = config.rms_norm_eps
        self.mlp_width = config.intermediate_size
        self.act = ACT2FN[config.hidden_act]
        self.rotary = inner.rotary_emb
        fits_kernels = (
            self.device.type == "cpu"
            and config.hidden_act == "silu"
            and self.head_dim % 16 == 0
            and self.head_dim <= 256
            and self.heads // self.kv_heads <= 16
        )
        self.kernels = kernels.library() if fits_kernels else None
        exact = _Exact(folder if dtype == torch.bfloat16 else None, self.kernels)
        embed_blocks = exact.blocks(["model.embed_tokens.weight"], int8_inputs=False)  # and a tied head's
        self.embed: torch.Tensor | BlockWeight = (
            embed_blocks if embed_blocks is not None else inner.embed_tokens.weight.detach().to(dtype)
        )
        self.norm = inner.norm.weight.detach().to(dtype)
        head_columns = (("lm_head", 0, model.lm_head.out_features),)
        head_bias = _linear(model.lm_head, dtype)[1]
        tied = model.lm_head.weight is inner.embed_tokens.weight
        head_blocks = embed_blocks if tied else exact.blocks(["lm_head.weight"], int8_inputs=False)
        self.head_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None  # for `_refine`: a bf16 head's
        if head_blocks is not None:
            self.lm_head = _Fused(head_blocks, head_bias, head_columns, lib=self.kernels)
        else:
            head_weight = _linear(model.lm_head, dtype)[0]
            self.lm_head = _packed(_Fused(head_weight, head_bias, head_columns))
            self.head_rows = (head_weight, head_bias)  # tied heads share the embedding's tensor
        self.layers = []
        for index, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            prefix = f"model.layers.{index}"
            self.layers.append(
                _Layer(
                    layer.input_layernorm.weight.detach().to(dtype),
                    layer.post_attention_layernorm.weight.detach().to(dtype),
                    # q/k/v keep bf16 inputs: their errors pass through attention's softmax,
                    # where 8-bit inputs cost the most agreement with the float32 model (BENCHMARKS.md)
                    qkv=_fuse(
                        attn, ("q_proj", "k_proj", "v_proj"), dtype, exact, f"{prefix}.self_attn", int8_inputs=False
                    ),
                    o=_fuse(attn, ("o_proj",), dtype, exact, f"{prefix}.self_attn", int8_inputs=True),
                    gate_up=_fuse(mlp, ("gate_proj", "up_proj"), dtype, exact, f"{prefix}.mlp", int8_inputs=True),
                    down=_fuse(mlp, ("down_proj",), dtype, exact, f"{prefix}.mlp", int8_inputs=True),
                )
            )
        self.layer_table = self._layer_table()
        blocked = self.kernels is not None
        self.cache_shape = CacheShape(len(self.layers), self.kv_heads, self.head_dim, dtype, self.device, blocked)

    def _layer_table(self) -> torch.Tensor | None:
        """Each layer's weights as `kernels.layers` reads them, so a step runs every layer in one call;
        None where a projection is not blocks or has a bias (the passes are then called one by one)."""
        table = []
        for layer in self.layers:
            fields = [layer.attn_norm.data_ptr(), layer.mlp_norm.data_ptr()]
            for fused in (layer.qkv, layer.o, layer.gate_up, layer.down):
                weight = fused.weight
                if not isinstance(weight, BlockWeight) or fused.bias is not None:
                    return None
                mins = 0 if weight.mins is None else weight.mins.data_ptr()
                fields += [weight.q.data_ptr(), weight.scales.data_ptr(), mins, weight.bits, int(weight.int8_inputs)]
            table.append(fields)
        return torch.tensor(table, dtype=torch.int64) if table else None

    def new_cache(self) -> SequenceCache:
        return SequenceCache(self.cache_shape)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """RMSNorm of `x`'s rows; with `delta`, `x += delta` in place first (the residual add)."""
        if self.kernels is not None:
            return kernels.rms_norm(self.kernels, x, weight, self.eps, delta)
        if delta is not None:
            x.add_(delta)
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(self.dtype) * weight

    def _rope_(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """RoPE in place on the q and k heads of `qkv` `[tokens, (heads + 2 kv_heads) × head_dim]`."""
        if self.kernels is not None:
            kernels.rope_(self.kernels, qkv, self.heads + self.kv_heads, self.head_dim, cos, sin)
            return
        total, roped = qkv.shape[0], (self.heads + self.kv_heads) * self.head_dim
        heads = qkv[:, :roped].view(total, -1, self.head_dim)
        heads.copy_(_rope(heads, cos[:, None, :], sin[:, None, :]))

    def _gate(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.kernels is not None:
            return kernels.silu_mul(self.kernels, gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act(gate) * up

    def _project(
        self, x: torch.Tensor, layer_index: int, fused: _Fused, groups: list[tuple[LoraWeights, int, int]]
    ) -> torch.Tensor:
        out = fused(x)
        for lora, start, end in groups:
            stacked = lora.stacked(layer_index, fused.columns)  # one update for q, k and v (gate and up)
            if stacked is not None:
                a, b = stacked
                out[start:end].add_(_linear_rows(_linear_rows(x[start:end], a), b), alpha=lora.scale)
        return out

    @torch.inference_mode()
    def forward(self, rows: list[Row]) -> torch.Tensor:
        """Run one step and return each row's next-token logits `[rows, vocab]` in float32 (from the
        last of its tokens); every row's cache then holds its tokens too."""
        spans: list[tuple[int, int, int]] = []  # (first token, end, positions already cached)
        groups: list[tuple[LoraWeights, int, int]] = []  # rows of one adapter: (its weights, first token, end)
        position_lists, start = [], 0
        for row in rows:
            count, past = len(row.token_ids), row.cache.length
            row.cache.reserve(past + count)
            spans.append((start, start + count, past))
            position_lists.append(torch.arange(past, past + count))
            if row.lora is not None:
                if groups and groups[-1][0] is row.lora and groups[-1][2] == start:
                    groups[-1] = (row.lora, groups[-1][1], start + count)
                else:
                    groups.append((row.lora, start, start + count))
            start += count
        tokens = torch.tensor([t for row in rows for t in row.token_ids], device=self.device)
        positions = torch.cat(position_lists).to(self.device)
        x = (
            self.embed.rows(tokens).to(self.dtype)
            if isinstance(self.embed, BlockWeight)
            else F.embedding(tokens, self.embed)
        )
        cos, sin = self.rotary(x[None], positions[None])
        cos, sin = cos[0].contiguous(), sin[0].contiguous()  # [tokens, head_dim]
        meta = torch.tensor(
            [
                [row.cache.kv.data_ptr(), row.cache.kv.shape[3], past, first, end - first]
                for row, (first, end, past) in zip(rows, spans, strict=True)
            ],
            dtype=torch.int64,
        )
        if self.layer_table is not None and not groups:
            shape = (self.heads, self.kv_heads, self.head_dim, self.mlp_width)
            assert self.kernels is not None
            delta = kernels.layers(self.kernels, self.layer_table, meta, x, cos, sin, shape, self.eps, self.scale)
        else:
            delta = self._layers(x, rows, spans, groups, meta, cos, sin)
        for row in rows:
            row.cache.length += len(row.token_ids)
        last = torch.tensor([end - 1 for _, end, _ in spans], device=self.device)
        h = self._norm(x[last], self.norm, delta[last])
        head = self.lm_head
        if isinstance(head.weight, BlockWeight):  # float32 sums of the exact weights: nothing to refine
            logits = head.weight.matmul(head.lib, h, torch.float32)
            return logits if head.bias is None else logits.add_(head.bias)
        return self._refine(h, head(h).float())

    def _layers(
        self,
        x: torch.Tensor,
        rows: list[Row],
        spans: list[tuple[int, int, int]],
        groups: list[tuple[LoraWeights, int, int]],
        meta: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        """Every decoder layer, pass by pass (`forward`'s arguments); returns the last layer's MLP output,
        not yet added to `x`."""
        total = x.shape[0]
        q_end = self.heads * self.head_dim
        k_end = q_end + self.kv_heads * self.head_dim
        delta: torch.Tensor | None = None  # the last layer's MLP output, not yet added to x
        for index, layer in enumerate(self.layers):
            h = self._norm(x, layer.attn_norm, delta)
            qkv = self._project(h, index, layer.qkv, groups)
            self._rope_(qkv, cos, sin)
            q = qkv[:, :q_end].view(total, self.heads, self.head_dim)
            k = qkv[:, q_end:k_end].view(total, self.kv_heads, self.head_dim)
            v = qkv[:, k_end:].view(total, self.kv_heads, self.head_dim)
            if self.kernels is not None:
                attended = kernels.attention(self.kernels, meta, index, q, k, v, self.scale)
            else:
                attended = torch.empty((total, self.heads, self.head_dim), dtype=self.dtype, device=self.device)
                for row, (first, end, past) in zip(rows, spans, strict=True):
                    attended[first:end] = self._attend(row.cache, index, past, q[first:end], k[first:end], v[first:end])
            o = self._project(attended.view(total, -1), index, layer.o, groups)
            h = self._norm(x, layer.mlp_norm, o)
            delta = self._project(self._gate(self._project(h, index, layer.gate_up, groups)), index, layer.down, groups)
        assert delta is not None
        return delta

    def _refine(self, h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """`logits` with each row's most likely tokens' recomputed in float32 from `h`.

        Logits come out of a bf16 matmul rounded to 8 bits: between 16 and 32 a step of 0.125, so two
        near-tied tokens often fall on the same value and greedy decoding picks by token id. Recomputing
        the few that can be the largest keeps the choice the model's."""
        if self.dtype == torch.float32 or self.head_rows is None:
            return logits
        weight, bias = self.head_rows
        top = logits.topk(REFINED_LOGITS, dim=-1).indices  # [rows, k]
        exact = (weight[top].float() * h.float()[:, None, :]).sum(-1)  # a reduction per row, whatever the rows
        if bias is not None:
            exact += bias[top].float()
        return logits.scatter_(1, top, exact)

    def _attend(
        self, cache: SequenceCache, layer: int, past: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """One sequence's attention at one layer: its new keys and values go into its cache first.

        Queries are taken a cache block (`BLOCK` positions, aligned) at a time, so a position's result
        is the same however its prompt was split between steps or restored from the prefix cache."""
        end = past + q.shape[0]
        cache.kv[layer, 0, :, past:end] = k.transpose(0, 1)
        cache.kv[layer, 1, :, past:end] = v.transpose(0, 1)
        queries = q.transpose(0, 1)[None]  # [1, heads, count, head_dim]
        parts, first = [], past
        while first < end:
            last = min(end, (first // BLOCK + 1) * BLOCK)
            count = last - first
            mask = None
            if count > 1 and first:
                positions = torch.arange(last, device=q.device)
                mask = positions[None, :] <= torch.arange(first, last, device=q.device)[:, None]
            parts.append(
                F.scaled_dot_product_attention(
                    queries[:, :, first - past : last - past],
                    cache.kv[layer, 0, :, :last][None],
                    cache.kv[layer, 1, :, :last][None],
                    attn_mask=mask,
                    is_causal=count > 1 and not first,
                    scale=self.scale,
                    enable_gqa=True,
                )
            )
            first = last
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        return out[0].transpose(0, 1)


def _linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, with a row's result the same whatever other rows share the call: the CPU's matmul
    takes a different kernel for one row (a matrix-vector product, summing in another order) than for
    two or more, whose rows it computes alike; so one row is computed as two."""
    if x.shape[0] != 1:
        return F.linear(x, weight, bias)
    return F.linear(x.expand(2, -1), weight, bias)[:1]


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
