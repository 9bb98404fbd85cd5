"""Masked next-token loss, summed (not averaged) so a step can normalize by all its trained tokens.

Averaging per micro-batch would weight short micro-batches more and make batch 1 × accumulation 8
differ from batch 8 (PITFALLS 4); summing and dividing once per optimizer step does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunehouse.models.template import IGNORE_INDEX


@dataclass
class LossSums:
    loss_sum: torch.Tensor
    correct: int
    tokens: int


def masked_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> LossSums:
    """Sum of cross-entropy over positions whose next token is trained, and the argmax hits."""
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    selected_logits = shift_logits[mask].float()
    selected_labels = shift_labels[mask]
    loss_sum = F.cross_entropy(selected_logits, selected_labels, reduction="sum")
    correct = int((selected_logits.argmax(dim=-1) == selected_labels).sum())
    return LossSums(loss_sum=loss_sum, correct=correct, tokens=int(mask.sum()))
