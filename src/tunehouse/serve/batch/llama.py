"""A batched forward pass for Llama-family models: many sequences in one step, each on its own KV cache.

The tokens of every row in a step — one for a sequence that decodes, a chunk of its prompt for one that
prefills — are packed into one `[tokens, hidden]` matrix, so each projection is one matmul over the
whole batch. Attention runs per sequence over that sequence's cache (PyTorch's scaled-dot-product
attention, GQA without copying the keys), so a row's result never depends on its companions. Rows
that use a LoRA adapter are grouped, and each group adds its own low-rank update to the projections it
adapts (`lora.py`). The weights are the Hugging Face model's own, in bf16 where the hardware computes
it fast; RoPE's frequencies (theta and scaling) come from the model's own rotary embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from tunehouse.serve.batch.kv import BLOCK, CacheShape, SequenceCache
from tunehouse.serve.batch.lora import LoraWeights

SUPPORTED_ARCHITECTURES = frozenset({"LlamaForCausalLM"})


def supports(model: Any) -> bool:
    """Whether `model` (a transformers model) is one this forward pass computes."""
    config = model.config
    return (
        type(model).__name__ in SUPPORTED_ARCHITECTURES
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
class _Layer:
    attn_norm: torch.Tensor
    mlp_norm: torch.Tensor
    proj: dict[str, tuple[torch.Tensor, torch.Tensor | None]]


class BatchedLlama:
    """The forward pass of one loaded Llama model in `dtype`; weights copied only when `dtype` differs."""

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        config = model.config
        inner = model.model
        self.dtype = dtype
        self.device = next(model.parameters()).device
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.eps = config.rms_norm_eps
        self.act = ACT2FN[config.hidden_act]
        self.rotary = inner.rotary_emb
        self.embed = inner.embed_tokens.weight.detach().to(dtype)
        self.norm = inner.norm.weight.detach().to(dtype)
        self.lm_head, self.lm_head_bias = _linear(model.lm_head, dtype)
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            proj = {name: _linear(getattr(attn, name), dtype) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
            proj |= {name: _linear(getattr(mlp, name), dtype) for name in ("gate_proj", "up_proj", "down_proj")}
            self.layers.append(
                _Layer(
                    layer.input_layernorm.weight.detach().to(dtype),
                    layer.post_attention_layernorm.weight.detach().to(dtype),
                    proj,
                )
            )
        self.cache_shape = CacheShape(len(self.layers), self.kv_heads, self.head_dim, dtype, self.device)

    def new_cache(self) -> SequenceCache:
        return SequenceCache(self.cache_shape)

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(self.dtype) * weight

    def _project(
        self,
        x: torch.Tensor,
        layer_index: int,
        name: str,
        weights: tuple[torch.Tensor, torch.Tensor | None],
        groups: list[tuple[LoraWeights, int, int]],
    ) -> torch.Tensor:
        out = _linear_rows(x, *weights)
        for lora, start, end in groups:
            module = lora.modules.get((layer_index, name))
            if module is not None:
                a, b, scale = module
                out[start:end].add_(_linear_rows(_linear_rows(x[start:end], a), b), alpha=scale)
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
        x = F.embedding(tokens, self.embed)
        cos, sin = self.rotary(x[None], positions[None])
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [tokens, 1, head_dim]
        total = tokens.shape[0]
        for index, layer in enumerate(self.layers):
            h = self._rms_norm(x, layer.attn_norm)
            q = self._project(h, index, "q_proj", layer.proj["q_proj"], groups).view(total, self.heads, -1)
            k = self._project(h, index, "k_proj", layer.proj["k_proj"], groups).view(total, self.kv_heads, -1)
            v = self._project(h, index, "v_proj", layer.proj["v_proj"], groups).view(total, self.kv_heads, -1)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            attended = torch.empty_like(q)
            for row, (first, end, past) in zip(rows, spans, strict=True):
                attended[first:end] = self._attend(row.cache, index, past, q[first:end], k[first:end], v[first:end])
            x = x + self._project(attended.view(total, -1), index, "o_proj", layer.proj["o_proj"], groups)
            h = self._rms_norm(x, layer.mlp_norm)
            gate = self._project(h, index, "gate_proj", layer.proj["gate_proj"], groups)
            up = self._project(h, index, "up_proj", layer.proj["up_proj"], groups)
            x = x + self._project(self.act(gate) * up, index, "down_proj", layer.proj["down_proj"], groups)
        for row in rows:
            row.cache.length += len(row.token_ids)
        last = torch.tensor([end - 1 for _, end, _ in spans], device=self.device)
        h = self._rms_norm(x[last], self.norm)
        return _linear_rows(h, self.lm_head, self.lm_head_bias).float()

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
