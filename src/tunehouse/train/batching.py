"""Batches of encoded examples: seeded order, length grouping, right padding."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from tunehouse.models.template import IGNORE_INDEX, EncodedExample


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Optimizer-step batches of example indices for one epoch, reproducible from (seed, epoch).

    Examples are shuffled, then grouped by length inside windows of 50 batches so that a batch pads
    little, and the batch order is shuffled again so long and short batches alternate randomly.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if batch_size == 1:
        return [[i] for i in order]
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def micro_batches(indices: list[int], lengths: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Split one optimizer step's examples into forward passes of similar length."""
    ordered = sorted(indices, key=lambda i: lengths[i])
    return [ordered[i : i + micro_batch_size] for i in range(0, len(ordered), micro_batch_size)]


def collate(examples: list[EncodedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
