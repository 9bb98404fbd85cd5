"""KV caches: one per running sequence, and a prefix cache of prompt blocks shared between requests.

A sequence's cache holds every layer's keys and values in one tensor `[layers, 2, kv_heads, capacity,
head_dim]`, allocated when the sequence starts, grown by doubling, and dropped when it ends (finish,
cancel or a client that hung up). The prefix cache keeps the keys and values of whole prompt blocks
(`BLOCK` tokens) under a hash of every token up to the block's end and the adapter that computed them,
so the same system prompt — or the `n` choices of one request — is computed once and copied after.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

BLOCK = 16  # prompt tokens per prefix-cache block, and positions per block of blocked keys (`kernels.c`'s LANES)
FIRST_CAPACITY = 64  # positions a new sequence's cache holds before it first grows: a multiple of BLOCK


@dataclass(frozen=True)
class CacheShape:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    blocked_keys: bool = False
    """Keys kept as `kernels.c` keeps them: each block of `BLOCK` positions transposed (in bf16, each
    key's features paired). Copies then move whole blocks only, and only the kernels read the keys."""

    def bytes_per_token(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8


class SequenceCache:
    """One sequence's keys and values for every layer; `length` positions are filled."""

    def __init__(self, shape: CacheShape, capacity: int = FIRST_CAPACITY) -> None:
        self.shape = shape
        self.kv = self._empty(capacity)
        self.length = 0

    def _empty(self, capacity: int) -> torch.Tensor:
        s = self.shape
        return torch.empty(s.layers, 2, s.kv_heads, capacity, s.head_dim, dtype=s.dtype, device=s.device)

    def reserve(self, positions: int) -> None:
        """Make room for `positions` in all (doubling, so a long generation grows its cache rarely)."""
        capacity = self.kv.shape[3]
        if positions <= capacity:
            return
        while capacity < positions:
            capacity *= 2
        grown = self._empty(capacity)
        filled = self._filled()
        grown[:, :, :, :filled] = self.kv[:, :, :, :filled]
        self.kv = grown

    def _filled(self) -> int:
        """The positions a copy moves: those filled, or with blocked keys every block they touch."""
        return -(-self.length // BLOCK) * BLOCK if self.shape.blocked_keys else self.length

    def fork(self) -> SequenceCache:
        """A copy holding the same filled positions, for a choice that shares this one's prompt."""
        twin = SequenceCache(self.shape, self.kv.shape[3])
        filled = self._filled()
        twin.kv[:, :, :, :filled] = self.kv[:, :, :, :filled]
        twin.length = self.length
        return twin

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


def block_keys(token_ids: list[int], salt: str) -> list[bytes]:
    """The key of each whole block of `token_ids`: a hash chained over every token up to its end."""
    keys, previous = [], hashlib.sha1(salt.encode()).digest()
    for end in range(BLOCK, len(token_ids) + 1, BLOCK):
        block = ",".join(map(str, token_ids[end - BLOCK : end])).encode()
        previous = hashlib.sha1(previous + block).digest()
        keys.append(previous)
    return keys


class PrefixCache:
    """Prompt blocks' keys and values for one model, least recently used first out past `budget` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.nbytes = 0
        self._blocks: OrderedDict[bytes, torch.Tensor] = OrderedDict()  # [layers, 2, kv_heads, BLOCK, head_dim]

    def restore(self, token_ids: list[int], salt: str, cache: SequenceCache) -> int:
        """Copy the longest cached run of `token_ids`' leading blocks into the empty `cache` — all but the
        last token at most, whose logits the sequence still needs. Returns the tokens restored."""
        usable = block_keys(token_ids[:-1], salt)
        found: list[torch.Tensor] = []
        for key in usable:
            block = self._blocks.get(key)
            if block is None:
                break
            self._blocks.move_to_end(key)
            found.append(block)
        if found:
            cache.reserve(len(found) * BLOCK)
            cache.kv[:, :, :, : len(found) * BLOCK] = torch.cat(found, dim=3)
            cache.length = len(found) * BLOCK
        return len(found) * BLOCK

    def store(self, token_ids: list[int], salt: str, cache: SequenceCache) -> None:
        """Keep the whole blocks of a prompt whose keys and values `cache` now holds."""
        if self.budget <= 0:
            return
        for index, key in enumerate(block_keys(token_ids, salt)):
            if key in self._blocks:
                self._blocks.move_to_end(key)
                continue
            block = cache.kv[:, :, :, index * BLOCK : (index + 1) * BLOCK].clone()
            self._blocks[key] = block
            self.nbytes += block.numel() * block.element_size()
        while self.nbytes > self.budget and self._blocks:
            _, old = self._blocks.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()

    def clear(self) -> None:
        """Forget every block (a model's weights changed)."""
        self._blocks.clear()
        self.nbytes = 0
